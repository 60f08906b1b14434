"""nnunet_cin.training.seeding: where the run seed comes from, the streams derived from it, and the generators' states
that `--c` restores. The trainer-level checks (same seed -> same weights) are in test_trainer.py."""
import random

import numpy as np
import pytest
import torch

from nnunet_cin.training.seeding import (DATA, INIT, SEED_ENV, WORKER, derive_seed, rng_state, run_seed,
                                         seed_everything, set_rng_state, worker_seeds)


def test_environment_overrides_the_class_attribute():
    assert run_seed(None, {}) is None  # nnU-Net's behaviour: unseeded
    assert run_seed(7, {}) == 7
    assert run_seed(7, {SEED_ENV: "3"}) == 3
    assert run_seed(None, {SEED_ENV: " 12 "}) == 12
    assert run_seed(7, {SEED_ENV: ""}) == 7  # set but empty: as if unset
    assert run_seed(0, {}) == 0  # 0 is a seed, not "unset"


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "0x10"])
def test_a_bad_seed_names_the_variable(bad):
    with pytest.raises(ValueError, match=f"{SEED_ENV} must be a non-negative integer.*{bad}"):
        run_seed(None, {SEED_ENV: bad})
    with pytest.raises(ValueError, match="`seed` attribute"):
        run_seed(-2, {})


def test_streams_are_distinct_and_reproducible():
    seeds = {(s, *stream): derive_seed(s, *stream)
             for s in (0, 1, 2) for stream in ((INIT,), (DATA, 0, 0), (DATA, 1, 0), (DATA, 0, 5))}
    assert len(set(seeds.values())) == len(seeds)  # no two streams (runs, ranks, first epochs) share a seed
    assert all(derive_seed(*k) == v for k, v in seeds.items())
    assert all(0 <= v < 2 ** 32 for v in seeds.values())  # np.random.seed's range
    # seed + rank would make rank 1 of seed 0 replay rank 0 of seed 1: derived streams do not
    assert derive_seed(0, DATA, 1, 0) != derive_seed(1, DATA, 0, 0)


def test_worker_seeds():
    assert worker_seeds(None, 0, 0, 0, 3) is None  # unseeded: nnU-Net's seeds=None
    train = worker_seeds(5, 0, 0, 0, 3)
    assert len(set(train)) == 3 and train == worker_seeds(5, 0, 0, 0, 3)
    others = worker_seeds(5, 1, 0, 0, 3) + worker_seeds(5, 0, 0, 1, 3) + worker_seeds(5, 0, 4, 0, 3)
    assert not set(train) & set(others)  # other rank, the validation loader, a run continued at epoch 4
    assert train[0] == derive_seed(5, WORKER, 0, 0, 0, 0)


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_seed_everything_seeds_python_numpy_and_torch():
    seed_everything(11)
    first = draws()
    seed_everything(11)
    assert draws() == first
    seed_everything(12)
    assert all(a != b for a, b in zip(draws(), first))


def test_rng_state_round_trip_survives_a_weights_only_checkpoint(tmp_path):
    seed_everything(4)
    np.random.randn()  # numpy's cached Gaussian is part of its state
    state = rng_state()
    expected = [draws() for _ in range(3)] + [float(np.random.randn())]
    torch.save({"rng_state": state}, tmp_path / "c.pth")
    loaded = torch.load(tmp_path / "c.pth", weights_only=True)["rng_state"]
    seed_everything(99)
    set_rng_state(loaded)
    assert [draws() for _ in range(3)] + [float(np.random.randn())] == expected
