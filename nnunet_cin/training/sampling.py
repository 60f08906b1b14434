"""Which cases a training batch is drawn from: nnU-Net's data loader, told each case's modality.

Modes
- "mixed" (interleaved mixed training, the method's default): every sample of every batch is drawn independently;
  a sample comes from modality m with probability share[m], and from each of m's cases with equal probability. This
  is nnU-Net's own infinite random sampling with per-case `sampling_probabilities`, so cropping, foreground
  oversampling (the last round(batch_size * (1 - p)) samples of a batch are forced to contain foreground, nnU-Net's
  meaning) and DDP (each rank draws its own part of the global batch from the same distribution, so the global shares
  hold) are untouched. When every case gets the same probability (shares "proportional", or "equal" shares of
  modalities with equally many cases) no probabilities are passed: numpy then draws exactly what nnU-Net's loader
  draws from the same seed, so a seeded run of ours sees the batches a seeded nnUNetTrainer sees and comparisons of
  the two are paired (numpy's choice draws other numbers when given probabilities, even equal ones).
- "alternate" (the joint-training baseline): each batch holds one modality; batch number t is modality
  t mod M (modalities in their conditioning order). Every data-augmentation worker numbers its batches as
  t = offset + worker + k * num_workers, so the stream alternates exactly with nnUNet_n_proc_DA=0 (and with
  round-robin workers); nnU-Net's non-deterministic workers may interleave neighbouring batches, the shares stay
  equal. Under DDP every rank computes the same t, so a global batch is one modality.

Shares: "equal" (each modality 1/M of the samples, regardless of case counts), "proportional" (to the number of
training cases, i.e. nnU-Net's uniform sampling over cases) or a mapping {modality name: weight} (normalised).
"""
from typing import Dict, Mapping, Sequence, Union

import numpy as np
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

SAMPLING_MODES = ("mixed", "alternate")
Shares = Union[str, Mapping[str, float]]


def modality_shares(shares: Shares, counts: Mapping[str, int]) -> Dict[str, float]:
    """Normalised share of samples per modality. counts: {modality name: number of cases available} in the
    conditioning order. Modalities without cases get share 0 (and may not be asked for explicitly)."""
    present = [m for m, n in counts.items() if n > 0]
    if not present:
        raise ValueError("no training cases: cannot sample a batch")
    if shares == "equal":
        weights = {m: 1.0 for m in present}
    elif shares == "proportional":
        weights = {m: float(counts[m]) for m in present}
    elif isinstance(shares, Mapping):
        unknown = [m for m in shares if m not in counts]
        if unknown:
            raise ValueError(f"modality shares name unknown modalities {unknown}; known: {list(counts)}")
        missing = [m for m, w in shares.items() if w > 0 and counts[m] == 0]
        if missing:
            raise ValueError(f"modality shares ask for {missing}, which have no training cases")
        if any(w < 0 for w in shares.values()):
            raise ValueError(f"modality shares must be >= 0, got {dict(shares)}")
        weights = {m: float(shares.get(m, 0.0)) for m in present}
    else:
        raise ValueError(f"modality shares must be 'equal', 'proportional' or a mapping name -> weight, got {shares!r}")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"modality shares sum to 0: {dict(weights)}")
    return {m: weights.get(m, 0.0) / total for m in counts}


def case_probabilities(case_modality_index: Sequence[int], share_per_modality: Sequence[float]) -> np.ndarray:
    """Per-case sampling probabilities: modality m gets share_per_modality[m], split equally among its cases."""
    case_modality_index = np.asarray(case_modality_index, dtype=int)
    counts = np.bincount(case_modality_index, minlength=len(share_per_modality))
    shares = np.asarray(share_per_modality, dtype=float)
    p = shares[case_modality_index] / counts[case_modality_index]
    return p / p.sum()


class ModalityDataLoader(nnUNetDataLoader):
    """nnUNetDataLoader whose batches follow modality shares ("mixed") or alternate between modalities.

    case_modality_index: {case identifier: conditioning index}; modalities: names in conditioning order. Everything
    after choosing the cases (cropping, oversampling, transforms, batch layout) is nnU-Net's.
    """

    def __init__(self, data, batch_size, patch_size, final_patch_size, label_manager, *,
                 case_modality_index: Mapping[str, int], modalities: Sequence[str], shares: Shares = "equal",
                 mode: str = "mixed", first_batch: int = 0, num_workers: int = 1, **kwargs):
        if mode not in SAMPLING_MODES:
            raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {mode!r}")
        if kwargs.pop("sampling_probabilities", None) is not None:
            raise ValueError("ModalityDataLoader computes the sampling probabilities from the modality shares")
        identifiers = list(data.identifiers)
        self.modalities = list(modalities)
        self.case_modality_index = np.array([case_modality_index[k] for k in identifiers], dtype=int)
        counts = np.bincount(self.case_modality_index, minlength=len(self.modalities))
        self.shares = modality_shares(shares, dict(zip(self.modalities, counts.tolist())))
        if mode == "alternate" and shares != "equal":
            raise ValueError("alternate sampling gives every modality the same number of batches; shares must be "
                             "'equal'")
        probabilities = case_probabilities(self.case_modality_index, list(self.shares.values()))
        if mode != "mixed" or np.allclose(probabilities, probabilities[0], rtol=1e-9, atol=0):
            probabilities = None  # nnU-Net's uniform draw (see the module docstring)
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         sampling_probabilities=probabilities, **kwargs)
        self.mode = mode
        # alternate: the cycle skips modalities without cases; `first_batch` continues a resumed run's order
        self.cycle = [m for m in range(len(self.modalities)) if counts[m] > 0]
        self.cases_of = {m: [k for k, i in zip(identifiers, self.case_modality_index) if i == m] for m in self.cycle}
        self.first_batch = int(first_batch)
        self.num_workers = max(1, int(num_workers))
        self.batches_drawn = 0

    def batch_number(self) -> int:
        """Global number of the next batch of this worker (see the module docstring)."""
        return self.first_batch + self.thread_id + self.batches_drawn * self.num_workers

    def get_indices(self):
        if self.mode == "mixed":
            return super().get_indices()
        modality = self.cycle[self.batch_number() % len(self.cycle)]
        self.batches_drawn += 1
        return list(np.random.choice(self.cases_of[modality], self.batch_size, replace=True))
