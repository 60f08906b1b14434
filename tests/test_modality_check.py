"""The modality check before prediction (nnunet_cin.inference.modality_check), on signatures learned from generated
cases; the end-to-end runs through nnUNetv2_predict_cin are in test_predict.py."""
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from nnunet_cin.dataset_conversion.synthetic import generate_case
from nnunet_cin.inference.modality_check import (BY_FLAG, BY_RULES, BY_SIGNATURE, CaseModality, ModalityCheck,
                                                 ModalityCheckError, features_of_cases, record_decisions, unclear)
from nnunet_cin.planning import signature as sig


def features(modality, seed, transform=None):
    image, _ = generate_case(modality, seed, (32, 32, 32))
    arr = sitk.GetArrayFromImage(image)[None].astype(np.float32)
    if transform is not None:
        arr = transform(arr)
    return sig.case_features(arr, image.GetSpacing()[::-1])


def signatures(training):
    """{modality: the generator modality its training cases come from}; CT's absolute scale is checked, as planned."""
    feats = {m: [features(source, s) for s in range(5)] for m, source in training.items()}
    return json.loads(json.dumps(sig.build_signatures(feats, [m for m in training if m == "CT"])))


@pytest.fixture(scope="module")
def ct_mr():
    return signatures({"CT": "CT", "MR": "MR"})


def minmax(a):
    return (a - a.min()) / (a.max() - a.min())


def test_a_case_given_the_wrong_modality_is_refused_with_every_such_case_listed(ct_mr):
    check = ModalityCheck(ct_mr, ["CT", "MR"])
    feats = {"ct_a": features("CT", 100), "ct_b": features("CT", 101), "mr_a": features("MR", 100)}
    given = {"ct_a": CaseModality("MR", BY_FLAG), "ct_b": CaseModality("CT", BY_FLAG),
             "mr_a": CaseModality("CT", BY_RULES)}
    with pytest.raises(ModalityCheckError) as e:
        check.check_given(given, feats, "--modality")
    msg = str(e.value)
    assert "2 of 3 input case(s)" in msg and "nothing was predicted or written" in msg
    assert "ct_a: given MR (by --modality), looks like CT" in msg
    assert "mr_a: given CT (by the model's dataset.json rules), looks like MR" in msg
    assert "ct_b" not in msg and "--skip-modality-check" in msg and "check_modalities = False" in msg
    # the right modalities pass, each with its match
    right = {c: CaseModality(m, BY_FLAG) for c, m in (("ct_a", "CT"), ("ct_b", "CT"), ("mr_a", "MR"))}
    out = check.check_given(right, feats)
    assert {c: (d.modality, d.match.verdict, d.match.best) for c, d in out.items()} == {
        "ct_a": ("CT", "match", "CT"), "ct_b": ("CT", "match", "CT"), "mr_a": ("MR", "match", "MR")}
    assert all(d.match.margin >= check.min_margin for d in out.values()) and not unclear(out)


def test_no_clear_match_is_reported_not_refused(ct_mr):
    """A CT no longer in HU (rescaled to [0, 1]) looks like no trained modality; an MR between two modalities learned
    from the same sequence matches neither clearly. Both are predicted as given, and listed by `unclear`."""
    check = ModalityCheck(ct_mr, ["CT", "MR"])
    out = check.check_given({"ct": CaseModality("CT", BY_FLAG)}, {"ct": features("CT", 100, minmax)})
    assert out["ct"].modality == "CT" and out["ct"].match.verdict == "none" and list(unclear(out)) == ["ct"]
    twins = ModalityCheck(signatures({"MR": "MR", "MR2": "MR"}), ["MR", "MR2"])
    out = twins.check_given({"mr": CaseModality("MR2", BY_RULES)}, {"mr": features("MR", 100)})
    assert out["mr"].modality == "MR2" and out["mr"].match.verdict == "ambiguous"
    assert "no clear match" in out["mr"].describe()


def test_auto_recognises_each_case_and_names_those_it_cannot(ct_mr):
    check = ModalityCheck(ct_mr, ["CT", "MR"])
    feats = {"case_000": features("CT", 100), "case_001": features("MR", 100), "case_002": features("CT", 102)}
    out = check.recognise(list(feats), feats, "-m")
    assert {c: (d.modality, d.decided_by) for c, d in out.items()} == {
        "case_000": ("CT", BY_SIGNATURE), "case_001": ("MR", BY_SIGNATURE), "case_002": ("CT", BY_SIGNATURE)}
    feats["case_003"] = features("CT", 103, minmax)
    with pytest.raises(ModalityCheckError) as e:
        check.recognise(list(feats), feats, "-m")
    msg = str(e.value)
    assert "1 of 4 case(s)" in msg and "case_003: looks like none" in msg and "-m NAME" in msg
    assert "case_000" not in msg and "nothing was predicted or written" in msg
    # a CT-only model whose plans hold the MR signature too: an MR case is recognised as MR, which it cannot predict
    ct_only = ModalityCheck(ct_mr, ["CT"])
    with pytest.raises(ModalityCheckError, match=r"case_001: looks like MR, a modality this model was not trained "
                                                 r"on \(it serves \['CT'\]\)"):
        ct_only.recognise(["case_000", "case_001"], feats, "--modality")


def test_plans_without_usable_signatures_and_modalities_without_one(ct_mr):
    old = ModalityCheck(None, ["CT", "MR"])
    assert not old.usable and "no modality signatures" in old.why_unusable
    other_version = ModalityCheck(dict(ct_mr, version=sig.VERSION + 1), ["CT", "MR"])
    assert not other_version.usable and f"version {sig.VERSION + 1}" in other_version.why_unusable
    # a modality of the model with no signature (a model extended without one): its cases cannot be judged
    check = ModalityCheck(ct_mr, ["CT", "MR", "T2"])
    assert check.unsigned == ["T2"] and check.known == ["CT", "MR"]


def test_the_record_of_a_run_keeps_the_cases_of_earlier_runs(tmp_path, ct_mr):
    check = ModalityCheck(ct_mr, ["CT", "MR"])
    feats = {"b": features("MR", 100)}
    first = check.recognise(["b"], feats, "-m")
    record_decisions(str(tmp_path), {"c": CaseModality("CT", BY_RULES), **first})
    record_decisions(str(tmp_path), {"a": CaseModality("MR", BY_FLAG), "c": CaseModality("MR", BY_FLAG)})
    text = (tmp_path / "modalities.json").read_text()
    record = json.loads(text)
    assert list(record) == ["a", "b", "c"]
    assert record["a"] == {"modality": "MR", "decided_by": "-m", "checked": False}
    assert record["c"]["modality"] == "MR"  # this run's decision replaces the earlier one
    m = first["b"].match
    assert record["b"] == {"modality": "MR", "decided_by": "auto", "checked": True, "verdict": "match",
                           "looks_like": "MR", "runner_up": "CT", "margin": round(m.margin, 1)}
    # a single-modality model: the margin is infinite, recorded as null (JSON has no infinity)
    single = ModalityCheck(signatures({"MR": "MR"}), ["MR"]).recognise(["d"], {"d": features("MR", 100)}, "-m")
    assert math.isinf(single["d"].match.margin)
    record_decisions(str(tmp_path), single)
    assert json.loads((tmp_path / "modalities.json").read_text())["d"]["margin"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["modalities.json"]  # nothing written aside was left


def test_features_are_those_of_the_image_as_nnunets_reader_reads_it_and_follow_a_changed_file(tmp_path):
    image, _ = generate_case("CT", 7, (16, 20, 24))
    path = str(tmp_path / "ct_0000.nii.gz")
    sitk.WriteImage(image, path)
    arr, props = SimpleITKIO().read_images([path])
    assert features_of_cases({"ct": [path]}, SimpleITKIO)["ct"] == sig.case_features(arr, props["spacing"])
    sitk.WriteImage(generate_case("MR", 7, (16, 20, 24))[0], path)  # the same file name, another image
    arr, props = SimpleITKIO().read_images([path])
    assert features_of_cases({"ct": [path]}, SimpleITKIO)["ct"] == sig.case_features(arr, props["spacing"])
    (tmp_path / "junk_0000.nii.gz").write_bytes(b"junk")
    with pytest.raises(ModalityCheckError, match="junk_0000.nii.gz cannot be read for the modality check"):
        features_of_cases({"junk": [str(tmp_path / "junk_0000.nii.gz")]}, SimpleITKIO)
