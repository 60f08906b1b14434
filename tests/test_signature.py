"""Modality signatures (nnunet_cin.planning.signature) on generated cases: held-out cases of each modality are
recognised, images that no longer look like their modality are not accepted, and a wrong answer is never confident."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_cin.dataset_conversion.synthetic import generate_case
from nnunet_cin.planning import signature

TRAIN, TEST = range(6), range(500, 506)
SCHEMES = {"CT": "CTNormalization", "MR": "ZScoreNormalization", "T2": "ZScoreNormalization"}


def absolute(modalities):
    return [m for m in modalities if signature.scale_matters(SCHEMES[m])]


def case(modality, seed, shape=(32, 32, 32)):
    image, _ = generate_case(modality, seed, shape)
    return sitk.GetArrayFromImage(image)[None].astype(np.float32), image.GetSpacing()[::-1]


def feats(modality, seed, transform=lambda a: a):
    image, spacing = case(modality, seed)
    return signature.case_features(transform(image), spacing)


@pytest.fixture(scope="module")
def train():
    return {m: [feats(m, s) for s in TRAIN] for m in ("CT", "MR", "T2")}


@pytest.fixture(scope="module")
def sig2(train):
    return signature.build_signatures({m: train[m] for m in ("CT", "MR")}, absolute(["CT", "MR"]))


@pytest.fixture(scope="module")
def sig3(train):
    return signature.build_signatures(train, absolute(train))


def test_scale_matters_for_every_scheme_but_per_image_ones():
    assert signature.scale_matters("CTNormalization") and signature.scale_matters("NoNormalization")
    assert signature.scale_matters("RGBTo01Normalization") and signature.scale_matters("MyCustomNormalization")
    assert not signature.scale_matters("ZScoreNormalization")
    assert not signature.scale_matters("RescaleTo01Normalization")


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_held_out_cases_match_their_modality(sig2, modality):
    for s in TEST:
        r = signature.match(sig2, feats(modality, s))
        assert r.verdict == "match" and r.best == modality, r
        assert r.margin >= signature.MIN_MARGIN


def test_three_modalities_never_wrong_and_closest_is_right(sig3):
    """MR and the synthetic T2 differ only in a few structures: ambiguity is allowed there, a wrong match is not."""
    closest = 0
    for m in ("CT", "MR", "T2"):
        for s in TEST:
            r = signature.match(sig3, feats(m, s))
            assert r.verdict != "match" or r.best == m, (m, s, r)
            assert m != "CT" or r.best == "CT", r
            closest += r.candidate == m
    assert closest >= 0.8 * 3 * len(TEST)


def test_swapped_signatures_swap_the_answer(sig2):
    """The matcher reads the signatures: with the CT and MR entries exchanged, a CT case is called "MR"."""
    swapped = dict(sig2, modalities={"CT": sig2["modalities"]["MR"], "MR": sig2["modalities"]["CT"]})
    r = signature.match(swapped, feats("CT", TEST[0]))
    assert r.verdict == "match" and r.best == "MR"


def test_half_swapped_features_are_not_accepted(sig2):
    """An MR case whose absolute quantiles are a CT's, or a CT case with an MR histogram shape, is not a CT."""
    ct, mr = feats("CT", TEST[0]), feats("MR", TEST[0])
    assert signature.match(sig2, {k: (ct[k] if k.startswith("a_") else mr[k]) for k in mr}).best != "CT"
    assert signature.match(sig2, {k: (mr[k] if k.startswith(("r_", "cdf_", "neg")) else ct[k]) for k in ct}).best \
        != "CT"


@pytest.mark.parametrize("factor", [0.5, 3.0])
def test_rescaled_mr_is_still_mr(sig2, sig3, factor):
    """MR is z-scored per image: an intensity factor does not change what the model sees."""
    for s in TEST[:3]:
        f = feats("MR", s, lambda a: a * factor)
        assert signature.match(sig2, f).best == "MR"
        r = signature.match(sig3, f)  # MR vs T2 may be ambiguous; it must not become another modality
        assert r.candidate == "MR" and r.best in ("MR", None) and r.verdict != "none", r


@pytest.mark.parametrize("transform", [lambda a: (a - a.min()) / (a.max() - a.min()), lambda a: a * 3.0],
                         ids=["minmax", "x3"])
def test_ct_off_the_hu_scale_is_not_confidently_anything(sig2, sig3, transform):
    for s in TEST[:3]:
        for sig in (sig2, sig3):
            r = signature.match(sig, feats("CT", s, transform))
            assert r.verdict == "none" and r.best is None, r


def test_scale_free_ct_accepts_a_rescaled_ct(train):
    """The absolute scale is checked because of CT's normalization scheme, not its name: a CT z-scored per image
    (dataset.json "modality_normalization": {"CT": "zscore"}) is still recognised after a rescaling."""
    sig = signature.build_signatures({m: train[m] for m in ("CT", "MR")}, absolute_modalities=[])
    assert not sig["modalities"]["CT"]["absolute"]
    for s in TEST[:3]:
        assert signature.match(sig, feats("CT", s, lambda a: a * 3.0)).best == "CT"


def test_indistinguishable_modalities_are_ambiguous(train):
    """Two modalities learned from the same kind of cases: any such case is ambiguous, never a match."""
    sig = signature.build_signatures({"CT": train["CT"], "MR": train["MR"][:3], "MR_bis": train["MR"][3:]}, ["CT"])
    for s in TEST[:3]:
        r = signature.match(sig, feats("MR", s))
        assert r.verdict == "ambiguous" and r.best is None and r.candidate in ("MR", "MR_bis"), r


def test_unrelated_image_is_none(sig3):
    rng = np.random.default_rng(0)
    for image in (rng.normal(0.0, 1.0, (1, 32, 32, 32)), np.full((1, 32, 32, 32), 7.0)):
        r = signature.match(sig3, signature.case_features(image, (1.0, 1.0, 1.0)))
        assert r.verdict == "none", r


def test_cropped_and_resampled_cases(sig2):
    from scipy import ndimage
    for m in ("CT", "MR"):
        image, spacing = case(m, TEST[1])
        half = signature.case_features(image[:, :16], spacing)
        small = ndimage.zoom(image[0], 0.5, order=1)[None]
        down = signature.case_features(small, tuple(2 * s for s in spacing))
        for f in (half, down):
            assert signature.match(sig2, f).best == m


def test_json_round_trip_and_size(sig3):
    text = json.dumps(sig3)
    assert len(text) < 8000
    back = json.loads(text)
    f = feats("MR", TEST[0])
    assert signature.match(back, f) == signature.match(sig3, f)
    assert not back["modalities"]["MR"]["absolute"] and back["modalities"]["CT"]["absolute"]
    assert not any(k.startswith("a_") for k in back["modalities"]["MR"]["center"])


def test_one_training_case_is_enough_thanks_to_the_floors():
    sig = signature.build_signatures({m: [feats(m, 0)] for m in ("CT", "MR")}, ["CT"])
    for m in ("CT", "MR"):
        for s in TEST[:3]:
            assert signature.match(sig, feats(m, s)).best == m


def test_case_features_by_hand_pure_deterministic_and_subsampled():
    image, spacing = case("MR", 1)
    before = image.copy()
    f1 = signature.case_features(image, spacing)
    assert np.array_equal(image, before), "case_features must not modify the caller's array"
    assert f1 == signature.case_features(image, spacing)
    assert f1 == signature.case_features(image[0], spacing)  # (z, y, x) too
    # 100^3 voxels, stride 3 keeps 34^3 <= 2**16; half of them -100, half 100 (split along z at an even row)
    big = np.full((1, 100, 100, 100), -100, np.int16)
    big[:, 51:] = 100
    f = signature.case_features(big, (0.5, 2.0, 1.0))
    assert f["a_q1"] == -100 and f["a_q99"] == 100 and f["r_q1"] == -1 and f["r_q99p5"] == 1
    assert f["neg"] == pytest.approx(17 / 34) and f["cdf_0p5"] == pytest.approx(17 / 34)
    assert f["log_sp_min"] == pytest.approx(np.log(0.5)) and f["log_sp_max"] == pytest.approx(np.log(2.0))
    with pytest.raises(ValueError, match="no training case"):
        signature.build_signatures({"CT": []}, ["CT"])
