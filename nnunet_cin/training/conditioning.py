"""How a trainer learns which modality each sample is, and which network the plans describe for it.

- `training_modalities(plans, dataset_json)`: the conditioning order. nnUNetv2_plan_and_preprocess_cin plans carry
  it (nnunet_cin.plans); plain nnU-Net plans get it from the dataset.json rules.
- `plans_for_trainer(...)`: a copy of the plans whose configuration builds the network the trainer trains
  (conditional or plain) and which records the modalities, so the model folder's plans.json is self-describing.
- `ModalityLookup`: case identifier -> conditioning index, and a batch's keys -> the (batch,) index tensor that
  `nnunet_cin.condition` hands to every CIN layer.
"""
import warnings
from copy import deepcopy
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_cin.modalities import ModalityRules
from nnunet_cin.plans import CINPlans
from nnunet_cin.networks.unet import CONDITIONAL_OF, conditional_architecture

PLAIN_OF = {v: k for k, v in CONDITIONAL_OF.items()}
_warned = set()


def training_modalities(plans: dict, dataset_json: dict) -> List[str]:
    rules = ModalityRules.from_dataset_json(dataset_json)
    planned = CINPlans(plans).modalities
    if planned:
        if planned != list(rules.modalities):
            raise ValueError(f"the plans were made for modalities {planned} but dataset.json lists "
                             f"{list(rules.modalities)}; re-run nnUNetv2_plan_and_preprocess_cin")
        return planned
    return list(rules.modalities)


def plain_architecture(architecture: dict) -> dict:
    """The unconditioned counterpart of a plans architecture entry (CIN kwargs dropped)."""
    arch = deepcopy(architecture)
    arch["network_class_name"] = PLAIN_OF.get(arch["network_class_name"], arch["network_class_name"])
    for k in ("num_modalities", "cin_scope"):
        arch["arch_kwargs"].pop(k, None)
    return arch


def plans_for_trainer(plans: dict, configuration: str, modalities: Sequence[str], conditioned: bool,
                      trainer_name: str) -> dict:
    """Copy of `plans` whose `configuration` builds a conditional (conditioned=True) or plain network; records
    plans["cin"]["modalities"]. Plain nnU-Net plans normalise all modalities alike: warn once."""
    plans = CINPlans(plans).with_modalities(modalities)
    if not CINPlans(plans).per_modality_normalization and (trainer_name, configuration) not in _warned:
        _warned.add((trainer_name, configuration))
        warnings.warn(f"{trainer_name}: these are plain nnU-Net plans ({plans.get('plans_name')}): intensity "
                      f"normalization is NOT per modality (one scheme and one set of statistics for "
                      f"{', '.join(modalities)}). Plan with nnUNetv2_plan_and_preprocess_cin for per-modality "
                      f"normalization.", stacklevel=3)
    resolved = PlansManager(plans).get_configuration(configuration).configuration
    arch = resolved["architecture"]
    cin_scope = arch["arch_kwargs"].get("cin_scope", "encoder")
    arch = conditional_architecture(arch, len(modalities), cin_scope) if conditioned else plain_architecture(arch)
    plans["configurations"][configuration]["architecture"] = arch
    return plans


class ModalityLookup:
    """Case identifier -> modality name and conditioning index (dataset.json's rules, resolved once per case)."""

    def __init__(self, dataset_json: dict, modalities: Sequence[str]):
        self.rules = ModalityRules.from_dataset_json(dataset_json)
        self.modalities = list(modalities)
        self._index: Dict[str, int] = {}

    def index_of(self, case_id: str) -> int:
        case_id = str(case_id)
        if case_id not in self._index:
            self._index[case_id] = self.modalities.index(self.rules.modality_of(case_id))
        return self._index[case_id]

    def name_of(self, case_id: str) -> str:
        return self.modalities[self.index_of(case_id)]

    def indices(self, keys: Sequence[str]) -> np.ndarray:
        return np.array([self.index_of(k) for k in keys], dtype=np.int64)

    def tensor(self, keys: Sequence[str], device) -> torch.Tensor:
        return torch.from_numpy(self.indices(keys)).to(device, non_blocking=True)


def split_by_modality(batch: dict, modality: np.ndarray) -> List[Tuple[int, dict]]:
    """[(m, the samples of `batch` of modality m)] for every modality present (the batch itself when it holds one);
    `modality`: the conditioning index of each sample."""
    present = np.unique(modality)
    if len(present) == 1:
        return [(int(present[0]), batch)]
    parts = []
    for m in present:
        idx = np.flatnonzero(modality == m)
        t = torch.from_numpy(idx)
        target = batch['target']
        parts.append((int(m), {'data': batch['data'][t],
                               'target': [x[t] for x in target] if isinstance(target, list) else target[t],
                               'keys': [batch['keys'][i] for i in idx]}))
    return parts
