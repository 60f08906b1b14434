"""nnU-Net's experiment planners, planning the conditional network and per-modality normalization.

Each planner is nnU-Net's (default or ResEnc preset) with three changes:
- the architecture of every configuration is its conditional counterpart (CIN in the encoder, one affine row per
  modality): `nnunet_cin.networks.unet.conditional_architecture`; patch and batch size are planned exactly as nnU-Net
  plans them for the plain network (CIN adds no feature maps);
- plans["cin"] records the modalities (conditioning order), each modality's normalization scheme (dataset.json's
  "modality_normalization" where it names one, else `default_normalization`: today the modality name picks it the way
  nnU-Net chooses from a channel name), whether it uses the nonzero mask, its foreground intensity statistics (from
  that modality's cases only, see nnunet_cin.planning.fingerprint) and its signature (what its training images look
  like as a whole, nnunet_cin.planning.signature);
- preprocessed data get their own identifier (PLANS_CONFIGURATION; nnU-Net's ResEnc planners would share
  nnUNetPlans' folders, whose normalization is not per modality) and the preprocessor is CINPreprocessor.

The planner needs the per-modality fingerprint (nnunet_cin.planning.fingerprint.CINFingerprintExtractor).
"""
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    ResEncUNetPlanner, nnUNetPlannerResEncL, nnUNetPlannerResEncM, nnUNetPlannerResEncXL)
from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import (
    channel_name_to_normalization_mapping, get_normalization_scheme)
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_cin.planning.fingerprint import CINFingerprint
from nnunet_cin.planning.signature import build_signatures, scale_matters
from nnunet_cin.modalities import CheckedRules, ModalityError
from nnunet_cin.networks.unet import conditional_architecture
from nnunet_cin.plans import CINPlans

CIN_PREPROCESSOR = "CINPreprocessor"
CIN_SCOPE = "encoder"
NORMALIZATION_KEY = "modality_normalization"  # dataset.json: {modality: nnU-Net scheme name}, optional


def default_normalization(modality: str) -> str:
    """The normalization of a modality that dataset.json's "modality_normalization" does not name, as an nnU-Net
    scheme name: the modality's name picks it the way nnU-Net's channel names do (CT -> CT, noNorm -> noNorm, anything
    else -> zscore); `return "zscore"` would z-score every image whatever its modality. Kept per modality because the
    README's powered comparison found it no worse than z-score for all and more reliable at a fixed budget."""
    return modality


def _scheme_classes(modalities: Sequence[str], dataset_json: Mapping, source: Optional[str] = None) -> dict:
    requested = dataset_json.get(NORMALIZATION_KEY)
    if requested is None:
        requested = {}
    where = f"dataset.json ({source})" if source else "dataset.json"
    names = ", ".join(channel_name_to_normalization_mapping)
    if not isinstance(requested, Mapping):
        raise ModalityError(f'{where}: "{NORMALIZATION_KEY}" must be an object {{modality: scheme}}, e.g. '
                            f'{{"CT": "zscore", "MR": "zscore"}}; got {requested!r}')
    unknown = [m for m in requested if m not in modalities]
    if unknown:
        raise ModalityError(f'{where}: "{NORMALIZATION_KEY}" names modality/modalities {unknown} that are not in '
                            f'"modalities" {list(modalities)}; rename the key(s) or remove them')
    bad = {m: s for m, s in requested.items()
           if not isinstance(s, str) or s.casefold() not in channel_name_to_normalization_mapping}
    if bad:
        raise ModalityError(f'{where}: "{NORMALIZATION_KEY}" has unknown normalization scheme(s) '
                            + ", ".join(f'"{m}": {s!r}' for m, s in bad.items())
                            + f"; use one of nnU-Net's scheme names: {names} (case does not matter)")
    return {m: get_normalization_scheme(requested.get(m, default_normalization(m))) for m in modalities}


def normalization_schemes(modalities: Sequence[str], dataset_json: Mapping, source: Optional[str] = None) -> dict:
    """{modality: nnU-Net normalization class name}: the scheme dataset.json's "modality_normalization" names for the
    modality (nnU-Net's names as in channel_names: CT, noNorm, zscore, rescale_to_0_1, rgb_to_0_1), else
    `default_normalization`. An unknown modality or scheme is a ModalityError naming it (`source`: the file)."""
    return {m: c.__name__ for m, c in _scheme_classes(modalities, dataset_json, source).items()}


def modality_normalization(modalities: List[str], per_modality: dict,
                           dataset_json: Optional[Mapping] = None) -> Tuple[dict, dict]:
    """({modality: scheme class name}, {modality: use_mask_for_norm}), as nnU-Net decides per channel: the scheme
    from `normalization_schemes`; the nonzero mask when cropping to nonzero shrinks that modality's cases below 3/4
    (median) and the scheme supports it."""
    schemes, use_mask = {}, {}
    for m, scheme in _scheme_classes(modalities, dataset_json or {}).items():
        schemes[m] = scheme.__name__
        shrunk = per_modality[m]['median_relative_size_after_cropping'] < (3 / 4.)
        use_mask[m] = bool(scheme.leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true) if shrunk else False
    return schemes, use_mask


class CINPlannerMixin:
    """The CIN changes, on top of any nnU-Net ExperimentPlanner (put first in the bases). A planner sets its plans
    name and, where nnU-Net's preset has another, its GPU memory target; the signature is nnU-Net's."""
    default_plans_name: str  # each planner its own (plans file and data folders)
    default_gpu_memory_target_in_gb: float = 8  # nnU-Net's default for the preset

    def __init__(self, dataset_name_or_id: Union[str, int], gpu_memory_target_in_gb: Optional[float] = None,
                 preprocessor_name: str = CIN_PREPROCESSOR, plans_name: Optional[str] = None,
                 overwrite_target_spacing: Union[List[float], Tuple[float, ...]] = None,
                 suppress_transpose: bool = False, checked: Optional[CheckedRules] = None):
        if gpu_memory_target_in_gb is None:
            gpu_memory_target_in_gb = self.default_gpu_memory_target_in_gb
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                         plans_name or self.default_plans_name, overwrite_target_spacing, suppress_transpose)
        self._init_cin(checked)

    def _init_cin(self, checked: Optional[CheckedRules] = None):
        """`checked`: the rules the planning command checked against the training cases (and "modality_normalization"
        with them); planning without it checks both here."""
        if checked is None:
            source = f"{self.raw_dataset_folder}/dataset.json"
            checked = CheckedRules.of(self.dataset_json, self.dataset.keys(), source)
            normalization_schemes(checked.rules.modalities, self.dataset_json, source)  # fails before planning
        self.rules, case_modality = checked
        if not CINFingerprint(self.dataset_fingerprint).is_current(self.rules, case_modality):
            raise RuntimeError(f"the dataset_fingerprint.json of {self.dataset_name} has no per-modality statistics "
                               f"for the current modality rules: run nnUNetv2_plan_and_preprocess_cin (it extracts "
                               f"the per-modality fingerprint), with --clean if the dataset changed")
        if self.preprocessor_name != CIN_PREPROCESSOR:
            raise ValueError(f"{type(self).__name__} plans for {CIN_PREPROCESSOR} (per-modality normalization); "
                             f"got preprocessor_name={self.preprocessor_name!r}")

    # nnU-Net's body, except that nnUNet_n_proc_DA=0 (no augmentation workers, a valid training setting) no longer
    # makes torch.set_num_threads(0) fail during planning
    @staticmethod
    def static_estimate_VRAM_usage(patch_size, input_channels: int, output_channels: int, arch_class_name: str,
                                   arch_kwargs: dict, arch_kwargs_req_import):
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, get_allowed_n_proc_DA()))
        try:
            net = get_network_from_plans(arch_class_name, arch_kwargs, arch_kwargs_req_import, input_channels,
                                         output_channels, allow_init=False)
            return net.compute_conv_feature_map_size(patch_size)
        finally:
            torch.set_num_threads(threads)

    def generate_data_identifier(self, configuration_name: str) -> str:
        # always our own folders (nnU-Net's ResEnc planners reuse nnUNetPlans_2d/3d_fullres data)
        return self.plans_identifier + '_' + configuration_name

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        plan['architecture'] = conditional_architecture(plan['architecture'], len(self.rules.modalities), CIN_SCOPE)
        return plan

    def cin_plans(self) -> dict:
        fp = CINFingerprint(self.dataset_fingerprint)
        modalities = self.rules.modalities
        schemes, use_mask = modality_normalization(modalities, fp.per_modality, self.dataset_json)
        features = {m: fp.case_features_of(m) for m in modalities}
        signatures = build_signatures(features, [m for m in modalities if scale_matters(schemes[m])])
        return CINPlans.entry_for(modalities, self.rules.to_dict(), schemes, use_mask, fp.intensity_properties,
                                  signatures, self.dataset_json.get(NORMALIZATION_KEY))

    def save_plans(self, plans):
        CINPlans.set_entry(plans, self.cin_plans())
        super().save_plans(plans)


class ExperimentPlannerCIN(CINPlannerMixin, ExperimentPlanner):
    """nnU-Net's default planner (PlainConvUNet) -> plans nnUNetPlansCIN."""
    default_plans_name = 'nnUNetPlansCIN'


class ResEncUNetPlannerCIN(CINPlannerMixin, ResEncUNetPlanner):
    """nnU-Net's ResEncUNetPlanner -> plans nnUNetResEncUNetPlansCIN."""
    default_plans_name = 'nnUNetResEncUNetPlansCIN'


class nnUNetPlannerResEncMCIN(CINPlannerMixin, nnUNetPlannerResEncM):
    """ResEnc M preset (~9-11 GB VRAM) -> plans nnUNetResEncUNetMPlansCIN."""
    default_plans_name = 'nnUNetResEncUNetMPlansCIN'


class nnUNetPlannerResEncLCIN(CINPlannerMixin, nnUNetPlannerResEncL):
    """ResEnc L preset (~24 GB VRAM) -> plans nnUNetResEncUNetLPlansCIN."""
    default_plans_name = 'nnUNetResEncUNetLPlansCIN'
    default_gpu_memory_target_in_gb = 24


class nnUNetPlannerResEncXLCIN(CINPlannerMixin, nnUNetPlannerResEncXL):
    """ResEnc XL preset (~40 GB VRAM) -> plans nnUNetResEncUNetXLPlansCIN."""
    default_plans_name = 'nnUNetResEncUNetXLPlansCIN'
    default_gpu_memory_target_in_gb = 40


# -pl of nnUNetv2_plan_and_preprocess_cin: our class names, and nnU-Net's planner names for their CIN counterpart
PLANNERS = {c.__name__: c for c in (ExperimentPlannerCIN, ResEncUNetPlannerCIN, nnUNetPlannerResEncMCIN,
                                    nnUNetPlannerResEncLCIN, nnUNetPlannerResEncXLCIN)}
PLANNERS.update({'ExperimentPlanner': ExperimentPlannerCIN, 'ResEncUNetPlanner': ResEncUNetPlannerCIN,
                 'nnUNetPlannerResEncM': nnUNetPlannerResEncMCIN, 'nnUNetPlannerResEncL': nnUNetPlannerResEncLCIN,
                 'nnUNetPlannerResEncXL': nnUNetPlannerResEncXLCIN})
