"""Cross-validation folds stratified by modality: nnU-Net's seeded 5-fold split (same seed, sorted case
identifiers, splits_final.json layout) with every fold holding each modality in proportion."""
from typing import Dict, List, Mapping, Sequence

import numpy as np


def stratified_crossval_split(identifiers: Sequence[str], modality_of: Mapping[str, str], seed: int = 12345,
                              n_splits: int = 5) -> List[Dict[str, List[str]]]:
    """splits_final.json content: [{"train": [...], "val": [...]}, ...].

    The cases of each modality are shuffled (seeded) and dealt to the folds in turn; each modality starts dealing
    where the previous one stopped, so fold sizes differ by at most one and a modality with fewer cases than folds
    still lands in distinct folds."""
    keys = sorted(str(k) for k in identifiers)
    if len(keys) < n_splits:
        raise ValueError(f"cannot make {n_splits} folds from {len(keys)} cases")
    rng = np.random.RandomState(seed)
    fold_of, start = {}, 0
    for modality in sorted({modality_of[k] for k in keys}):
        cases = [k for k in keys if modality_of[k] == modality]
        for i, j in enumerate(rng.permutation(len(cases))):
            fold_of[cases[j]] = (start + i) % n_splits
        start = (start + len(cases)) % n_splits
    return [{"train": [k for k in keys if fold_of[k] != f], "val": [k for k in keys if fold_of[k] == f]}
            for f in range(n_splits)]
