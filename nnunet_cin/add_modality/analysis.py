"""What the new modality's cases look like, and the extended model's plans.json and dataset.json.

The new modality is planned the way nnUNetv2_plan_and_preprocess_cin plans any modality, from its own cases only:
- normalization scheme: the new dataset's dataset.json "modality_normalization" entry for it, else the name picks it
  (nnunet_cin.planning.planners.normalization_schemes); the nonzero mask by nnU-Net's rule (cropping to nonzero shrinks
  the cases below 3/4);
- intensity statistics: nnU-Net's foreground statistics (labelled voxels) of its cases. Without labels (--unlabeled)
  there is no foreground: the statistics are those of the whole image (cropped to nonzero), marked
  "statistics_from": "whole image", and only schemes that do not use them are allowed (z-score, noNorm,
  rescale_to_0_1, rgb_to_0_1; CT normalization clips with the foreground percentiles and is refused);
- signature: nnunet_cin.planning.signature from the same whole-image features as any modality's;
- everything else (spacing, patch size, network) is the trained model's plans, unchanged.
`closest_modality` ranks the model's modalities by their signature distance to the new cases (median chi2 of
nnunet_cin.planning.signature.match over the cases): the closest one's CIN rows are the new rows' default start.
"""
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

from nnunet_cin.add_modality.inputs import AddModalityError, Request
from nnunet_cin.modalities import ModalityError
from nnunet_cin.planning.fingerprint import SAMPLES_ENV, intensity_stats
from nnunet_cin.planning.planners import NORMALIZATION_KEY, modality_normalization, normalization_schemes
from nnunet_cin.planning.signature import build_signatures, case_features, match, scale_matters
from nnunet_cin.plans import CINPlans

FOREGROUND, WHOLE_IMAGE = "foreground", "whole image"
NEEDS_FOREGROUND = ("CTNormalization",)  # nnU-Net's schemes that normalize with the foreground statistics


@dataclass
class ModalityAnalysis:
    name: str
    scheme: str  # nnU-Net's normalization class name
    normalization_key: Optional[str]  # as the dataset's "modality_normalization" names it, if it does
    use_mask: bool
    intensity_properties: Dict[str, dict]
    statistics_from: str  # FOREGROUND | WHOLE_IMAGE
    case_features: Dict[str, dict]
    signature: dict
    median_relative_size_after_cropping: float


def _samples_per_case(num_cases: int) -> int:
    total = float(os.environ.get(SAMPLES_ENV) or 10e7)  # nnU-Net's total, as the fingerprint extractor
    return max(1, int(total // num_cases))


def _analyze_case(reader, files: dict, label_values: set, num_samples: int, seed: int) -> tuple:
    images, properties = reader.read_images(files["images"])
    features = case_features(images, properties["spacing"])
    seg = None
    if files["label"] is not None:
        seg, _ = reader.read_seg(files["label"])
        if seg.shape[1:] != images.shape[1:]:
            raise AddModalityError(f"label {files['label']} has shape {seg.shape[1:]}, its image "
                                   f"{tuple(images.shape[1:])}: pair the right files")
        unknown = sorted({int(v) if float(v).is_integer() else float(v) for v in np.unique(seg)} - label_values)
        if unknown:
            raise AddModalityError(f"label {files['label']} holds value(s) {unknown} that are not labels of the "
                                   f"model ({sorted(label_values)})")
    cropped, seg_cropped, _ = crop_to_nonzero(images, seg)
    relative_size = float(np.prod(cropped.shape[1:]) / np.prod(images.shape[1:]))
    if seg is not None:
        samples, _ = DatasetFingerprintExtractor.collect_foreground_intensities(seg_cropped, cropped, seed,
                                                                                num_samples)
    else:
        rs = np.random.RandomState(seed)
        samples = [rs.choice(c.ravel(), num_samples, replace=True) for c in cropped]
    return features, [np.asarray(s, dtype=np.float32) for s in samples], relative_size


def analyze_new_modality(request: Request) -> ModalityAnalysis:
    """Read every new case once: signature features, intensity samples, size after cropping; checks the label values
    (a label value the model does not know is an AddModalityError naming the file)."""
    dataset_json = request.dataset_json
    requested = (dataset_json.get(NORMALIZATION_KEY) or {}).get(request.new)
    only_new = {NORMALIZATION_KEY: {request.new: requested}} if requested is not None else {}
    try:
        scheme = normalization_schemes([request.new], only_new,
                                       os.path.join(request.dataset_folder, "dataset.json"))[request.new]
    except ModalityError as e:
        raise AddModalityError(str(e)) from None
    if not request.labelled and scheme in NEEDS_FOREGROUND:
        raise AddModalityError(f'"{request.new}" would be normalized with {scheme}, which needs foreground '
                               f'intensity statistics, and --unlabeled cases have no foreground. Label some cases, or '
                               f'set "{NORMALIZATION_KEY}": {{"{request.new}": "zscore"}} in the dataset\'s '
                               f'dataset.json')
    first = next(iter(request.cases.values()))["images"][0]
    reader = determine_reader_writer_from_dataset_json(dataset_json, first)()
    labels = request.model_dataset_json["labels"]
    label_values = {int(v) for v in (labels.values()) if not isinstance(v, (list, tuple))} | \
        {int(x) for v in labels.values() if isinstance(v, (list, tuple)) for x in v}
    num_samples = _samples_per_case(len(request.cases))
    features, samples, sizes = {}, [], []
    for i, (case, files) in enumerate(sorted(request.cases.items())):
        features[case], s, size = _analyze_case(reader, files, label_values, num_samples, 1234 + i)
        samples.append(s)
        sizes.append(size)
    properties = {}
    for c in range(len(samples[0])):
        pooled = np.concatenate([s[c] for s in samples])
        if pooled.size == 0:
            raise AddModalityError(f'no labelled foreground in any case of "{request.new}" (channel {c}): its '
                                   f'intensity statistics cannot be computed; check the labels')
        properties[str(c)] = intensity_stats(pooled)
    median_size = float(np.median(sizes))
    _, use_mask = modality_normalization([request.new], {request.new: {
        "median_relative_size_after_cropping": median_size}}, only_new)
    signature = build_signatures({request.new: list(features.values())},
                                 [request.new] if scale_matters(scheme) else [])["modalities"][request.new]
    return ModalityAnalysis(name=request.new, scheme=scheme, normalization_key=requested,
                            use_mask=use_mask[request.new], intensity_properties=properties,
                            statistics_from=FOREGROUND if request.labelled else WHOLE_IMAGE,
                            case_features=features, signature=signature,
                            median_relative_size_after_cropping=median_size)


def closest_modality(plans: dict, features: Dict[str, dict]) -> Tuple[Optional[str], Dict[str, float]]:
    """(the model's modality closest to the new cases by signature, {modality: median chi2 over the cases}); (None, {})
    when the plans carry no signatures."""
    signatures = CINPlans(plans).signatures
    if not signatures:
        return None, {}
    chi2 = [match(signatures, f).chi2 for f in features.values()]
    distance = {m: float(np.median([c[m] for c in chi2])) for m in signatures["modalities"]}
    return min(distance, key=distance.get), distance


def initial_rows(request: Request, analysis: ModalityAnalysis) -> Tuple[str, str]:
    """(the row the new rows start from: a modality name or "mean", why) for --init."""
    if request.init == "mean":
        return "mean", "--init mean: the mean of the model's rows"
    if request.init != "closest":
        return request.init, f"--init {request.init}"
    closest, distance = closest_modality(request.model_plans, analysis.case_features)
    if closest is None:
        return "mean", "the model's plans carry no modality signatures: the mean of its rows"
    shown = ", ".join(f"{m} {d:.1f}" for m, d in sorted(distance.items(), key=lambda x: x[1]))
    return closest, f"the closest modality by signature (median chi2 over the new cases: {shown})"


# What the new modality may adapt (nnunet-cin add-modality --adapt); each option holds the ones before it:
# its CIN rows in the encoder; also in the decoder's norms (shared until now: every old modality gets a copy of the
# shared affine, which computes bitwise what the shared norm computed); also a residual 1x1 adapter after every norm
# (nnunet_cin.networks.adapters).
ADAPT = ("rows", "rows+decoder", "adapters")
# rows: until benchmarks/bench_add_modality.py (arms a, a_dec, a_ad; k = 1, 2, 4; seeds) shows another one at least as
# good at every k, the long-measured option stays the default
DEFAULT_ADAPT = "rows"


def extended_plans(request: Request, analysis: ModalityAnalysis, provenance: dict, adapt: str = DEFAULT_ADAPT) -> dict:
    """The model's plans.json serving the new modality too: plans['cin'] extended (CINPlans.with_added_modality), the
    network of the model's configuration with the capacity `adapt` gives the new modality
    (nnunet_cin.networks.unet.conditional_architecture), written by the model's trainer (plans_for_training: the
    modality count of the network it builds)."""
    from nnunet_cin.networks.unet import ADAPTERS_KEY, conditional_architecture, is_conditional_unet

    if adapt not in ADAPT:
        raise AddModalityError(f"--adapt {adapt}: choose one of {', '.join(ADAPT)}")
    plans = CINPlans(request.model_plans).with_added_modality(
        request.new, analysis.scheme, analysis.use_mask, analysis.intensity_properties, request.rules,
        analysis.signature, analysis.normalization_key, provenance)
    count = len(CINPlans(plans).modalities)
    if adapt != "rows":
        configuration = plans["configurations"][request.configuration]
        arch = configuration.get("architecture")
        if arch is None or not is_conditional_unet(arch):
            raise AddModalityError(f"--adapt {adapt} needs a conditional U-Net (nnUNetTrainerCIN and its variants); "
                                   f"this model's network is {arch and arch['network_class_name']}: use --adapt rows")
        adapters = list(arch["arch_kwargs"].get(ADAPTERS_KEY) or []) + ([count - 1] if adapt == "adapters" else [])
        configuration["architecture"] = conditional_architecture(arch, count, "all", adapters)
    return request.trainer_class.plans_for_training(plans, request.configuration, extended_dataset_json(request,
                                                                                                        analysis))


def extended_dataset_json(request: Request, analysis: ModalityAnalysis) -> dict:
    """The model's dataset.json with the new modality's keys (the rules checked in inputs, its normalization name)."""
    out = dict(request.model_dataset_json)
    out.update(request.rules)
    if analysis.normalization_key is not None:
        out[NORMALIZATION_KEY] = dict(out.get(NORMALIZATION_KEY) or {}, **{request.new: analysis.normalization_key})
    return out

