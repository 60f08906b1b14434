"""The mixed-modality sampler (nnunet_cin.training.sampling) on a real nnU-Net (blosc2) dataset: shares, alternation, DDP
rank splitting, reachability of every case and nnU-Net's foreground oversampling."""
from collections import Counter

import numpy as np
import pytest
import torch
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_cin.training.sampling import ModalityDataLoader, case_probabilities, modality_shares

MODALITIES = ["CT", "MR"]
CT_CASES = [f"ct_{i:04d}" for i in range(6)]
MR_CASES = [f"mr_{i:04d}" for i in range(2)]
SHAPE = (16, 16, 16)
PATCH = (6, 6, 6)
DRAWS = 4000  # samples per share estimate: standard error <= 0.008, tolerance below 0.04


def modality_of(case: str) -> int:
    return 0 if case.startswith("ct_") else 1  # independent of the code under test: the id prefix


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """8 preprocessed cases in nnU-Net's blosc2 format; foreground: one 2x2x2 cube in a corner (a random 6^3 patch
    rarely holds it, a foreground-oversampled patch always does)."""
    folder = tmp_path_factory.mktemp("sampling")
    rng = np.random.default_rng(0)
    for case in CT_CASES + MR_CASES:
        data = rng.normal(size=(1, *SHAPE)).astype(np.float32)
        seg = np.zeros((1, *SHAPE), dtype=np.int16)
        seg[0, 1:3, 1:3, 1:3] = 1
        props = {"class_locations": DefaultPreprocessor._sample_foreground_locations(seg, [1], seed=1)}
        with pytest.warns(UserWarning):  # nnU-Net warns when chunks are not given
            nnUNetDatasetBlosc2.save_case(data, seg, props, str(folder / case))
    return nnUNetDatasetBlosc2(str(folder))


def make_loader(dataset, batch_size=2, shares="equal", mode="mixed", oversample=0.0, **kwargs):
    label_manager = LabelManager({"background": 0, "heart": 1}, regions_class_order=None)
    return ModalityDataLoader(dataset, batch_size, PATCH, PATCH, label_manager,
                              oversample_foreground_percent=oversample,
                              case_modality_index={k: modality_of(k) for k in dataset.identifiers}, modalities=MODALITIES,
                              shares=shares, mode=mode, **kwargs)


def draw(loader, n_batches):
    return [list(loader.get_indices()) for _ in range(n_batches)]


def share_of_mr(batches) -> float:
    flat = [k for b in batches for k in b]
    return sum(modality_of(k) for k in flat) / len(flat)


@pytest.mark.parametrize("shares, expected_mr", [("equal", 0.5), ("proportional", 2 / 8), ({"CT": 1, "MR": 3}, 0.75),
                                                 ({"CT": 1, "MR": 0}, 0.0)])
def test_mixed_shares_match_configuration(dataset, shares, expected_mr):
    np.random.seed(0)
    batches = draw(make_loader(dataset, batch_size=4, shares=shares), DRAWS // 4)
    assert share_of_mr(batches) == pytest.approx(expected_mr, abs=0.04)
    # mixed: batches do hold both modalities (samples are drawn independently, not per batch)
    if 0 < expected_mr < 1:
        assert sum(len({modality_of(k) for k in b}) == 2 for b in batches) > len(batches) / 4


def test_every_case_reachable_and_uniform_within_modality(dataset):
    np.random.seed(1)
    counts = Counter(k for b in draw(make_loader(dataset, batch_size=4), DRAWS // 4) for k in b)
    assert set(counts) == set(CT_CASES + MR_CASES)
    # equal shares: each CT case 0.5/6 of the samples, each MR case 0.5/2
    for case in CT_CASES:
        assert counts[case] / DRAWS == pytest.approx(0.5 / 6, abs=0.02)
    for case in MR_CASES:
        assert counts[case] / DRAWS == pytest.approx(0.5 / 2, abs=0.03)


def test_share_arithmetic():
    assert modality_shares("equal", {"CT": 6, "MR": 2}) == {"CT": 0.5, "MR": 0.5}
    assert modality_shares("proportional", {"CT": 6, "MR": 2}) == {"CT": 0.75, "MR": 0.25}
    assert modality_shares("equal", {"CT": 3, "MR": 0}) == {"CT": 1.0, "MR": 0.0}  # no MR case in this fold
    p = case_probabilities([0, 0, 0, 1], [0.5, 0.5])
    np.testing.assert_allclose(p, [1 / 6, 1 / 6, 1 / 6, 0.5])
    for bad, match in (({"XR": 1}, "unknown modalities"), ({"CT": -1, "MR": 1}, ">= 0"), ("uniform", "equal"),
                       ({"CT": 0, "MR": 0}, "sum to 0")):
        with pytest.raises(ValueError, match=match):
            modality_shares(bad, {"CT": 6, "MR": 2})
    with pytest.raises(ValueError, match="no training cases"):
        modality_shares({"MR": 1}, {"CT": 6, "MR": 0})


def test_alternate_alternates_and_continues(dataset):
    np.random.seed(2)
    batches = draw(make_loader(dataset, batch_size=3, mode="alternate"), 40)
    assert [{modality_of(k) for k in b} for b in batches] == [{t % 2} for t in range(40)]
    assert {k for b in batches for k in b} == set(CT_CASES + MR_CASES)  # every case reachable
    # a resumed run (--c) starts where the cycle stopped: batch 7 is MR
    resumed = draw(make_loader(dataset, batch_size=3, mode="alternate", first_batch=7), 2)
    assert [{modality_of(k) for k in b} for b in resumed] == [{1}, {0}]
    with pytest.raises(ValueError, match="shares must be 'equal'"):
        make_loader(dataset, mode="alternate", shares="proportional")
    with pytest.raises(ValueError, match="sampling mode"):
        make_loader(dataset, mode="sometimes")


def test_alternate_with_augmentation_workers(dataset):
    """nnU-Net's augmenter gives every worker a copy of the loader with its thread id; served round-robin, the
    stream still alternates."""
    workers = []
    for w in range(3):
        loader = make_loader(dataset, batch_size=2, mode="alternate", num_workers=3)
        loader.set_thread_id(w)
        workers.append(loader)
    stream = [{modality_of(k) for k in workers[t % 3].get_indices()} for t in range(12)]
    assert stream == [{t % 2} for t in range(12)]


def rank_batch_sizes(global_batch_size, world_size):
    """How nnUNetTrainer._set_batch_size_and_oversample splits a global batch over DDP ranks."""
    sizes = [global_batch_size // world_size] * world_size
    return [s + 1 if s * world_size + i < global_batch_size else s for i, s in enumerate(sizes)]


@pytest.mark.parametrize("shares, expected_mr", [("equal", 0.5), ("proportional", 0.25)])
def test_ddp_ranks_keep_global_shares(dataset, shares, expected_mr):
    """Each rank draws its own part of the global batch (nnU-Net's DDP); the union keeps the configured shares."""
    np.random.seed(3)
    sizes = rank_batch_sizes(5, 2)
    assert sizes == [3, 2]
    ranks = [make_loader(dataset, batch_size=s, shares=shares) for s in sizes]
    global_batches = [sum((list(r.get_indices()) for r in ranks), []) for _ in range(DRAWS // 5)]
    assert all(len(b) == 5 for b in global_batches)
    assert share_of_mr(global_batches) == pytest.approx(expected_mr, abs=0.04)
    # alternate under DDP: every rank serves the same modality at the same step, so a global batch is one modality
    ranks = [make_loader(dataset, batch_size=s, mode="alternate") for s in sizes]
    for t in range(6):
        assert {modality_of(k) for r in ranks for k in r.get_indices()} == {t % 2}


def test_foreground_oversampling_keeps_nnunet_meaning(dataset):
    """nnU-Net: the last round(batch_size * (1 - p)) samples of a batch are forced to contain foreground. With
    batch 3 and p = 0.33 that is the last sample; its modality follows the configured shares like any other."""
    np.random.seed(4)
    loader = make_loader(dataset, batch_size=3, oversample=0.33, shares="equal")
    forced_has_fg, free_has_fg, forced_modality = [], [], []
    for _ in range(60):
        batch = loader.generate_train_batch()
        fg = [(batch["target"][j] == 1).any().item() for j in range(3)]
        forced_has_fg.append(fg[2])
        free_has_fg += fg[:2]
        forced_modality.append(modality_of(batch["keys"][2]))
    assert all(forced_has_fg)
    assert np.mean(free_has_fg) < 0.9  # random crops do miss the small foreground
    assert 0.2 < np.mean(forced_modality) < 0.8


@pytest.mark.parametrize("shares", ["proportional", "equal"])
def test_uniform_probabilities_draw_nnunets_own_batches(dataset, shares):
    """When every case has the same probability (proportional shares; equal shares of equally many cases per
    modality), the loader draws what nnU-Net's nnUNetDataLoader draws from the same numpy seed, number for number: a
    seeded run of ours then sees the batches a seeded nnUNetTrainer sees, so that comparisons of the two are paired
    (same init, same batches) and differ only in the network."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    label_manager = LabelManager({"background": 0, "heart": 1}, regions_class_order=None)
    balanced = nnUNetDatasetBlosc2(dataset.source_folder, CT_CASES[:2] + MR_CASES) if shares == "equal" else dataset
    ours = make_loader(balanced, batch_size=3, shares=shares, oversample=0.33)
    nnunets = nnUNetDataLoader(balanced, 3, PATCH, PATCH, label_manager, oversample_foreground_percent=0.33)
    for seed in range(3):
        np.random.seed(seed)
        expected = [nnunets.generate_train_batch() for _ in range(20)]
        np.random.seed(seed)
        got = [ours.generate_train_batch() for _ in range(20)]
        assert [list(b["keys"]) for b in got] == [list(b["keys"]) for b in expected]
        assert all(torch.equal(g["data"], e["data"]) and torch.equal(g["target"], e["target"])
                   for g, e in zip(got, expected))
