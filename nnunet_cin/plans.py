"""The CIN part of nnU-Net plans, `plans["cin"]`: written by our planners, read everywhere else through `CINPlans`.

    plans["cin"] = {
        "modalities": ["CT", "MR"],                         the modalities a model serves; conditioning order (CIN row
                                                            m = modalities[m]). A trainer's plans (the model folder's
                                                            plans.json) record its own: ["MR"] for an MR-only baseline
        "rules": {dataset.json modality keys},               the rules the data was planned with
        "normalization_schemes": {"CT": "CTNormalization", "MR": "ZScoreNormalization"},
        "modality_normalization": {"CT": "zscore"},        dataset.json's key as given, if it had one
        "use_mask_for_norm": {"CT": false, "MR": false},
        "intensity_properties": {"CT": {"0": {mean, std, percentile_00_5, ...}}, ...},   foreground statistics per modality
        "signatures": {"version": 1, ..., "modalities": {"CT": {center, spread, ...}, ...}},  what each modality's
                                                             images look like (nnunet_cin.planning.signature)
        "added_modalities": {"T2": {dataset, cases, labelled, ...}},   only in models that nnunet-cin add-modality
                                                             extended
    }

Plans made by plain `nnUNetv2_plan_and_preprocess` have no "cin" entry; a trainer of ours that trains from them
records only "modalities" (one normalization for every modality, nnU-Net's). Plans made before the modality signatures
existed have no "signatures": `signatures` is None. A model's modalities travel in its plans.json and in every
checkpoint (checkpoint["init_args"]["plans"]; see `checkpoint_modalities`). Like nnU-Net's PlansManager, this class
reads a plans dict; `with_modalities`, `with_added_modality` and `without_entry` return a new plans dict, the
caller's is never modified.
"""
from copy import deepcopy
from typing import Dict, List, Optional, Sequence

from nnunet_cin.modalities import ModalityError, ModalityRules

KEY = "cin"


class CINPlansError(ModalityError):
    """Plans whose CIN part cannot serve the request; the message says what to re-run."""


class CINPlans:
    def __init__(self, plans: dict):
        self.plans = plans
        self.entry: dict = plans.get(KEY) or {}

    # ------------------------------------------------------------------------------------------------------- state
    @property
    def modalities(self) -> Optional[List[str]]:
        """The conditioning order the plans record (None: plain nnU-Net plans)."""
        m = self.entry.get("modalities")
        return list(m) if m else None

    def training_modalities(self, rules: Optional[ModalityRules]) -> List[str]:
        """The conditioning order of a model trained on these plans and this dataset: the plans' (which
        nnUNetv2_plan_and_preprocess_cin made from dataset.json), checked against the "modalities" of the dataset's
        `rules` (its dataset.json's); for plain nnU-Net plans, the rules'. rules None: the plans' alone."""
        planned = self.modalities
        if rules is None:
            if not planned:
                raise CINPlansError(f"plans {self.plans.get('plans_name')!r} record no modalities (plain nnU-Net "
                                    f"plans): the dataset.json with the modality keys is needed")
            return planned
        listed = list(rules.modalities)
        if planned and planned != listed:
            raise CINPlansError(f"the plans were made for modalities {planned} but dataset.json lists {listed}; "
                                f"re-run nnUNetv2_plan_and_preprocess_cin")
        return planned or listed

    @property
    def per_modality_normalization(self) -> bool:
        """Whether the plans normalize each modality with its own scheme and statistics (our planners' plans)."""
        return "normalization_schemes" in self.entry

    @property
    def normalization_schemes(self) -> Optional[Dict[str, str]]:
        """{modality: nnU-Net normalization class name} (None: plans without per-modality normalization)."""
        return self.entry.get("normalization_schemes")

    @property
    def rules(self) -> Optional[dict]:
        """The dataset.json modality keys the data was planned (and preprocessed) with."""
        return self.entry.get("rules")

    @property
    def signatures(self) -> Optional[dict]:
        """The modality signatures learned from the training cases (None: plans made without them)."""
        return self.entry.get("signatures")

    def normalization(self, modality: str, num_channels: int):
        """(scheme class name, use_mask_for_norm, {channel: intensity properties}) of `modality`."""
        if not self.per_modality_normalization:
            raise CINPlansError(f"plans {self.plans.get('plans_name')!r} carry no per-modality normalization "
                                f"(plans['cin']): make them with nnUNetv2_plan_and_preprocess_cin")
        if modality not in self.entry["normalization_schemes"]:
            raise CINPlansError(f'unknown modality "{modality}"; these plans serve {self.modalities}')
        props = self.entry["intensity_properties"][modality]
        missing = [str(c) for c in range(num_channels) if str(c) not in props]
        if missing:
            raise CINPlansError(f'plans["cin"]["intensity_properties"]["{modality}"] has no statistics for channel(s) '
                                f'{missing}; re-run nnUNetv2_plan_and_preprocess_cin')
        return (self.entry["normalization_schemes"][modality], bool(self.entry["use_mask_for_norm"][modality]),
                {str(c): props[str(c)] for c in range(num_channels)})

    # ------------------------------------------------------------------------------------------------------ writing
    @staticmethod
    def entry_for(modalities: Sequence[str], rules: dict, schemes: Dict[str, str], use_mask: Dict[str, bool],
                  intensity_properties: Dict[str, dict], signatures: Optional[dict] = None,
                  modality_normalization: Optional[dict] = None) -> dict:
        """The plans["cin"] entry a planner writes."""
        modalities = list(modalities)
        entry = {"modalities": modalities, "rules": dict(rules),
                 "normalization_schemes": {m: schemes[m] for m in modalities},
                 "use_mask_for_norm": {m: bool(use_mask[m]) for m in modalities},
                 "intensity_properties": {m: intensity_properties[m] for m in modalities}}
        if modality_normalization is not None:
            entry["modality_normalization"] = dict(modality_normalization)
        if signatures is not None:
            entry["signatures"] = signatures
        return entry

    @staticmethod
    def set_entry(plans: dict, entry: dict) -> None:
        """Puts a planner's entry (`entry_for`) into the plans it is writing (the one write in place)."""
        plans[KEY] = entry

    def with_added_modality(self, name: str, scheme: str, use_mask: bool, intensity_properties: Dict[str, dict],
                            rules: dict, signature: Optional[dict] = None, normalization_key: Optional[str] = None,
                            provenance: Optional[dict] = None) -> dict:
        """A copy of the plans that serves one more modality, `name`, appended to the conditioning order: the existing
        modalities keep their index and every entry. `name` gets its normalization `scheme` (nnU-Net's class name),
        `use_mask` and `intensity_properties` ({channel: statistics}); `signature` (one modality's entry of
        nnunet_cin.planning.signature.build_signatures) joins the others (plans without signatures keep none);
        `rules` are the dataset.json modality keys of the extended model; `normalization_key` the scheme as
        dataset.json's "modality_normalization" names it, if it does; `provenance` is recorded under
        plans["cin"]["added_modalities"][name] (nnunet-cin add-modality: where the modality came from)."""
        if not self.per_modality_normalization:
            raise CINPlansError(f"plans {self.plans.get('plans_name')!r} carry no per-modality normalization "
                                f"(plans['cin']): a modality can only be added to plans made by "
                                f"nnUNetv2_plan_and_preprocess_cin")
        if name in (self.modalities or []):
            raise CINPlansError(f'the plans already serve modality "{name}" ({self.modalities})')
        plans = deepcopy(self.plans)
        entry = plans[KEY]
        entry["modalities"] = self.modalities + [name]
        entry["rules"] = deepcopy(rules)
        entry["normalization_schemes"][name] = scheme
        entry["use_mask_for_norm"][name] = bool(use_mask)
        entry["intensity_properties"][name] = deepcopy(intensity_properties)
        if normalization_key is not None:
            entry["modality_normalization"] = dict(entry.get("modality_normalization") or {},
                                                   **{name: normalization_key})
        if signature is not None and entry.get("signatures"):
            entry["signatures"]["modalities"][name] = deepcopy(signature)
        if provenance is not None:
            entry["added_modalities"] = dict(entry.get("added_modalities") or {}, **{name: deepcopy(provenance)})
        return plans

    def with_modalities(self, modalities: Sequence[str]) -> dict:
        """A copy of the plans that records `modalities` as the conditioning order."""
        plans = deepcopy(self.plans)
        plans[KEY] = dict(plans.get(KEY) or {}, modalities=list(modalities))
        return plans

    def without_entry(self) -> dict:
        """A copy of the plans without their CIN part: plain nnU-Net plans (a model's plain counterpart, e.g. in
        benchmarks/bench_predict.py)."""
        plans = deepcopy(self.plans)
        plans.pop(KEY, None)
        return plans


def checkpoint_modalities(checkpoint: dict) -> Optional[List[str]]:
    """The modalities an nnU-Net checkpoint of ours serves (conditioning order): checkpoint["modalities"], which
    checkpoints written before the modalities travelled in the plans and converted files (nnunet-cin
    convert-pretrained) hold, else those of the plans it was trained with (checkpoint["init_args"]["plans"]).
    None: not a checkpoint of ours."""
    if checkpoint.get("modalities"):
        return list(checkpoint["modalities"])
    return CINPlans((checkpoint.get("init_args") or {}).get("plans") or {}).modalities
