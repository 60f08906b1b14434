"""How a trainer tells the network which modality each sample is.

- `ModalityLookup`: case identifier -> the model's conditioning index (the modality preprocessing stored for the
  case, else dataset.json's rules; once per case), and a batch's keys -> the (batch,) index tensor that
  `nnunet_cin.condition` hands to every CIN layer.
- `split_by_modality`: a batch cut into its modalities' parts (validation runs nnU-Net's step once per part).

Which network a trainer trains, and the modalities it records, is the trainer's own statement:
`nnUNetTrainerCIN.plans_for_training` (nnunet_cin.training.cin_trainer).
"""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from nnunet_cin.modalities import ModalityRules


class ModalityLookup:
    """Case identifier -> modality name and the model's conditioning index (its position in `modalities`, the order
    the model serves; the rules' own order can differ, e.g. for a single-modality model). A case's modality is the
    one preprocessing stored for it (`preprocessed`: {case: modality}, checked against the rules by
    nnunet_cin.preprocessing.drift), else the `rules`' (plain nnU-Net preprocessing stores none)."""

    def __init__(self, rules: ModalityRules, modalities: Sequence[str],
                 preprocessed: Optional[Mapping[str, str]] = None):
        self.rules = rules
        self.modalities = list(modalities)
        self.preprocessed = dict(preprocessed or {})
        self._model_index: Dict[str, int] = {}

    def model_index_of(self, case_id: str) -> int:
        case_id = str(case_id)
        if case_id not in self._model_index:
            name = self.preprocessed.get(case_id) or self.rules.modality_of(case_id)
            self._model_index[case_id] = self.modalities.index(name)
        return self._model_index[case_id]

    def name_of(self, case_id: str) -> str:
        return self.modalities[self.model_index_of(case_id)]

    def indices(self, keys: Sequence[str]) -> np.ndarray:
        return np.array([self.model_index_of(k) for k in keys], dtype=np.int64)

    def tensor(self, keys: Sequence[str], device) -> torch.Tensor:
        return torch.from_numpy(self.indices(keys)).to(device, non_blocking=True)


def split_by_modality(batch: dict, modality_index: np.ndarray) -> List[Tuple[int, dict]]:
    """[(m, the samples of `batch` of modality m)] for every modality present (the batch itself when it holds one);
    `modality_index`: the conditioning index of each sample."""
    present = np.unique(modality_index)
    if len(present) == 1:
        return [(int(present[0]), batch)]
    parts = []
    for m in present:
        idx = np.flatnonzero(modality_index == m)
        t = torch.from_numpy(idx)
        target = batch['target']
        parts.append((int(m), {'data': batch['data'][t],
                               'target': [x[t] for x in target] if isinstance(target, list) else target[t],
                               'keys': [batch['keys'][i] for i in idx]}))
    return parts
