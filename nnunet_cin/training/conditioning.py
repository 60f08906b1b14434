"""How a trainer tells the network which modality each sample is.

- `ModalityLookup`: case identifier -> conditioning index (dataset.json's rules, resolved once per case), and a
  batch's keys -> the (batch,) index tensor that `nnunet_cin.condition` hands to every CIN layer.
- `split_by_modality`: a batch cut into its modalities' parts (validation runs nnU-Net's step once per part).

Which network a trainer trains, and the modalities it records, is the trainer's own statement:
`nnUNetTrainerCIN.plans_for_training` (nnunet_cin.training.cin_trainer).
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from nnunet_cin.modalities import ModalityRules


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
