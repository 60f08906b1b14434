"""Seeded, reproducible training: one run seed, from which every random stream of the run is derived.

The run seed: the environment variable `nnUNet_cin_seed` (for the unchanged `nnUNetv2_train` command), else the
trainer's class attribute `seed`; None (both unset) = nnU-Net's behaviour, nothing is seeded.

What a run draws from, and the stream each draw comes from (`derive_seed(run seed, STREAM, ...)`: numpy's
SeedSequence, so runs seeded 0, 1, 2 share no stream and no stream of one run repeats another's):
- network initialisation: INIT, the same on every DDP rank (DDP copies rank 0's weights anyway);
- data loading and augmentation in the training process (nnUNet_n_proc_DA=0): python's `random`, numpy's and torch's
  global generators, seeded from (DATA, rank, first epoch of this run): every DDP rank draws its own stream;
- nnU-Net's augmentation workers (nnUNet_n_proc_DA > 0): worker w of the training (0) or validation (1) loader gets
  (WORKER, rank, first epoch, loader, w) as NonDetMultiThreadedAugmenter's `seeds=`;
- the modality sampler draws from numpy's global generator of the process it runs in (one of the above);
- nnU-Net's final validation (sliding window, export) draws nothing.
Checkpoints record the seed and the generators' states in checkpoint["init_args"] ("seed", RNG_STATE_KEY): nnU-Net's
checkpoint has no other place for them, and saves init_args as it is; under DDP the states of every rank ({"ranks":
[...]}, each rank continues its own). `--c` continues with the saved states, so a
seeded CPU run without workers that is interrupted and continued computes the same weights as an uninterrupted one.
Workers start from seeds of the continued run's first epoch instead (their states live in other processes).
"""
import os
import random
from typing import Optional

import numpy as np
import torch

SEED_ENV = "nnUNet_cin_seed"
RNG_STATE_KEY = "rng_state"  # checkpoint["init_args"][RNG_STATE_KEY]: the generators' states (seeded runs)
INIT, DATA, WORKER = 0, 1, 2  # stream tags
TRAIN_LOADER, VAL_LOADER = 0, 1


def _check(value, where: str) -> int:
    try:
        seed = int(str(value).strip())
    except ValueError:
        seed = -1
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"{where} must be a non-negative integer (the run seed), got {value!r}")
    return seed


def run_seed(class_seed: Optional[int], environ=os.environ) -> Optional[int]:
    """The run seed: $nnUNet_cin_seed if set (and not empty), else `class_seed` (None: unseeded)."""
    if environ.get(SEED_ENV, "").strip():
        return _check(environ[SEED_ENV], f"the environment variable {SEED_ENV}")
    if class_seed is None:
        return None
    return _check(class_seed, "the trainer's `seed` attribute")


def derive_seed(seed: int, *stream: int) -> int:
    """A 32-bit seed (numpy's `np.random.seed` takes no more) for the stream `stream` of the run seeded `seed`."""
    return int(np.random.SeedSequence([int(seed), *map(int, stream)]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """python's `random`, numpy's and torch's global generators (torch: CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def worker_seeds(seed: Optional[int], rank: int, first_epoch: int, loader: int, num_workers: int) -> Optional[list]:
    """NonDetMultiThreadedAugmenter's `seeds=`: one per worker, or None (unseeded, nnU-Net's)."""
    if seed is None:
        return None
    return [derive_seed(seed, WORKER, rank, first_epoch, loader, w) for w in range(num_workers)]


def rng_state() -> dict:
    """The global generators' states, as tensors, ints and tuples only (a checkpoint that torch.load reads with
    weights_only=True, too)."""
    np_state = np.random.get_state()
    state = {"python": _tuples(random.getstate()),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_py, np_state[2:])),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (tuple, list)) else x


def _py(x):
    return x.item() if isinstance(x, np.generic) else x


def checkpoint_seed(checkpoint: dict) -> Optional[int]:
    """The run seed a checkpoint records (checkpoint["init_args"]["seed"]); None: unseeded, or not ours."""
    return (checkpoint.get("init_args") or {}).get("seed")


def describe(seed: Optional[int]) -> str:
    return f"seed {seed}" if seed is not None else f"unseeded (set {SEED_ENV}=N for a reproducible run)"

