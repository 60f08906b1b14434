"""The modality check before prediction (nnunet_cin.inference.modality_check), on signatures learned from generated
cases; the end-to-end runs through nnUNetv2_predict_cin are in test_predict.py."""
import json
import math
import re

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from nnunet_cin.dataset_conversion.synthetic import generate_case
from nnunet_cin.inference import hounsfield as hf
from nnunet_cin.inference.modality_check import (BY_FLAG, BY_RULES, BY_SIGNATURE, CaseModality, ModalityCheck,
                                                 ModalityCheckError, array_evidence, features_of_cases,
                                                 record_decisions, unclear)
from scan_variants import real_cases, realistic_cases
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
    """An MR between two modalities learned from the same sequence matches neither clearly: predicted as given, and
    listed by `unclear`."""
    twins = ModalityCheck(signatures({"MR": "MR", "MR2": "MR"}), ["MR", "MR2"])
    out = twins.check_given({"mr": CaseModality("MR2", BY_RULES)}, {"mr": features("MR", 100)})
    assert out["mr"].modality == "MR2" and out["mr"].match.verdict == "ambiguous" and list(unclear(out)) == ["mr"]
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
    assert features_of_cases({"ct": [path]}, SimpleITKIO)["ct"].features == sig.case_features(arr, props["spacing"])
    assert features_of_cases({"ct": [path]}, SimpleITKIO)["ct"].hu.verdict == "hu"
    sitk.WriteImage(generate_case("MR", 7, (16, 20, 24))[0], path)  # the same file name, another image
    arr, props = SimpleITKIO().read_images([path])
    assert features_of_cases({"ct": [path]}, SimpleITKIO)["ct"].features == sig.case_features(arr, props["spacing"])
    (tmp_path / "junk_0000.nii.gz").write_bytes(b"junk")
    with pytest.raises(ModalityCheckError, match="junk_0000.nii.gz cannot be read for the modality check"):
        features_of_cases({"junk": [str(tmp_path / "junk_0000.nii.gz")]}, SimpleITKIO)


# --- physics: Hounsfield units ----------------------------------------------------------------------------------------

def ct_array(seed=100, shape=(32, 32, 32)):
    image, _ = generate_case("CT", seed, shape)
    return sitk.GetArrayFromImage(image)[None].astype(np.float32), image.GetSpacing()[::-1]


def test_which_normalizations_need_hounsfield_units():
    for scheme in ("CTNormalization", "CTWindowZScoreNormalization", "NoNormalization", "noNorm"):
        assert hf.needs_hu(scheme), scheme
    for scheme in ("ZScoreNormalization", "RescaleTo01Normalization", None, ""):
        assert not hf.needs_hu(scheme), scheme
    plans = {"cin": {"normalization_schemes": {"CT": "CTNormalization", "MR": "ZScoreNormalization",
                                               "CTw": "CTWindowZScoreNormalization", "X": "NoNormalization"}}}
    assert hf.hu_modalities(plans) == ["CT", "CTw", "X"] and hf.hu_modalities({}) == []


def test_hounsfield_evidence_by_physics():
    """Hand-made cases of each rule: a CT in HU (with a scanner's -3024 padding, which is left out), and the ways a
    CT leaves HU on export, each named with the storage that explains it."""
    ct, _ = ct_array()
    assert hf.hu_evidence(ct).verdict == "hu"
    padded = np.pad(ct, ((0, 0), (0, 0), (4, 4), (4, 4)), constant_values=-3024)
    assert hf.hu_evidence(padded).verdict == "hu"
    for stored, undo in ((np.clip(ct + 1024, 0, None), "+1024 offset"), (ct * 0.5, "scaled by 0.5"),
                         ((ct + 1024) / 4, "(HU + 1024) / 4")):
        e = hf.hu_evidence(stored)
        assert e.verdict == "not_hu" and undo in e.undo, (undo, e)
    assert hf.hu_evidence((ct - ct.min()) / (ct.max() - ct.min())).verdict == "not_hu"  # [0, 1]: too narrow
    assert "far below -1024" in hf.hu_evidence(ct * 2.0).reason
    mr = sitk.GetArrayFromImage(generate_case("MR", 100, (32, 32, 32))[0])[None].astype(np.float32)
    assert hf.hu_evidence(mr).verdict == "not_hu"  # no voxel below 0, a background plateau: not HU
    # inside the body only (no air): fat below 0 and soft tissue near 0 still say HU; a blood pool alone cannot
    rng = np.random.default_rng(0)
    body = np.concatenate([rng.normal(-100, 20, 3000), rng.normal(40, 20, 5000), rng.normal(320, 30, 2000)])
    assert hf.hu_evidence(body.reshape(1, 10, 10, 100)).verdict == "hu"
    assert hf.hu_evidence(rng.normal(320, 30, 1000).reshape(1, 10, 10, 10)).verdict == "unknown"


def test_a_ct_not_in_hounsfield_units_is_refused_naming_the_fix(ct_mr):
    check = ModalityCheck(ct_mr, ["CT", "MR"], ["CT"])
    ct, sp = ct_array(101)
    offset = array_evidence(np.clip(ct + 1024, 0, None), sp)
    for flag_given in ("CT", "MR"):  # as CT: not in HU; as MR: undone, it is a training-like CT
        with pytest.raises(ModalityCheckError) as e:
            check.check_given({"ct_0101": CaseModality(flag_given, BY_FLAG)}, {"ct_0101": offset})
        msg = str(e.value)
        assert "ct_0101: given" in msg and "stored with a +1024 offset" in msg and "rescale slope and intercept" in msg
        assert "nothing was predicted or written" in msg
    with pytest.raises(ModalityCheckError, match=r"(?s)case_0: looks like .*not in HU|case_0: looks like none"):
        check.recognise(["case_0"], {"case_0": offset}, "-m")
    halved = array_evidence(ct * 0.5, sp)  # the issue: "looks like CT, margin 94.6" and predicted with no word
    with pytest.raises(ModalityCheckError, match=r"ct_0101: given CT \(by -m\): CT's normalization needs Hounsfield"):
        check.check_given({"ct_0101": CaseModality("CT", BY_FLAG)}, {"ct_0101": halved})
    # the right modality in HU passes, and the record says what physics saw
    out = check.check_given({"ct_0101": CaseModality("CT", BY_FLAG)}, {"ct_0101": array_evidence(ct, sp)})
    assert out["ct_0101"].record()["hounsfield"] == "hu" and "in HU" in out["ct_0101"].describe()


def test_decided_by_evidence_also_for_a_scan_unlike_every_training_image(ct_mr):
    """The issue's first finding: a real head CT given -m MR (margin 64.5 towards CT) and a real MR given -m CT were
    predicted as given, because they are like none of the (generated heart) training images."""
    check = ModalityCheck(ct_mr, ["CT", "MR"], ["CT"])
    real = {c.name: c for c in real_cases()}
    ct = real["head_ct_invesalius_inner_crop"]  # inside the skull: physics cannot tell, the signatures decide
    e = array_evidence(ct.image, ct.spacing)
    assert e.hu.verdict == "unknown" and check.match(e).verdict == "none"
    with pytest.raises(ModalityCheckError) as err:
        check.check_given({"head": CaseModality("MR", BY_FLAG)}, {"head": e})
    msg = str(err.value)
    assert re.search(r"head: given MR \(by -m\), looks like CT \(margin \d+\.\d over MR\); it is unlike all "
                     r"training images", msg), msg
    assert "--skip-modality-check" in msg
    assert check.check_given({"head": CaseModality("CT", BY_FLAG)}, {"head": e})["head"].modality == "CT"
    # truly ambiguous stays "predicted as given, with a warning": two modalities of one sequence
    twins = ModalityCheck(signatures({"MR": "MR", "MR2": "MR"}), ["MR", "MR2"])
    mr = real["head_mr_t1_colin27"]
    out = twins.check_given({"h": CaseModality("MR2", BY_FLAG)}, {"h": array_evidence(mr.image, mr.spacing)})
    assert list(unclear(out)) == ["h"]


def _decisions(check, case):
    e = array_evidence(case.image, case.spacing)
    out = {}
    for given in ("CT", "MR"):
        try:
            check.check_given({case.name: CaseModality(given, BY_FLAG)}, {case.name: e})
            out[given] = "predicted"
        except ModalityCheckError:
            out[given] = "refused"
    try:
        out["auto"] = check.recognise([case.name], {case.name: e}, "-m")[case.name].modality
    except ModalityCheckError:
        out["auto"] = "refused"
    return out


@pytest.mark.parametrize("which", ["real", "realistic"])
def test_real_scans_and_realistic_variants(ct_mr, which):
    """Signatures of generated hearts (as the test models'): every real or realistic CT given MR and MR given CT is
    refused; -m auto never takes one for the other; every CT not in HU is refused as CT and by -m auto; every right
    -m is predicted."""
    check = ModalityCheck(ct_mr, ["CT", "MR"], ["CT"])
    cases = real_cases() if which == "real" else list(realistic_cases(seeds=(300,)))
    wrong = []
    for case in cases:
        d = _decisions(check, case)
        other = "MR" if case.modality == "CT" else "CT"
        expected_right = "predicted" if case.in_hu else "refused"
        # known limits (documentation, benchmarks/bench_modality_check_real.py): a CT cropped inside the body with
        # no air and little fat is told from an MR crop by the signatures alone; a CT rescaled to [0, 1] given MR
        limit = case.modality == "CT" and "fov" in case.name
        if d[case.modality] != expected_right and not limit:
            wrong.append(f"{case.name} given {case.modality}: {d[case.modality]}")
        if d["auto"] == other or (not case.in_hu and d["auto"] != "refused"):
            wrong.append(f"{case.name} -m auto: {d['auto']}")
        if d[other] != "refused" and not (limit or (case.modality == "CT" and "0_1" in case.name)):
            wrong.append(f"{case.name} given {other}: {d[other]}")
    assert not wrong, wrong
    if which == "real":
        assert {c.name for c in cases} >= {"head_ct_invesalius", "head_mr_t1_colin27"}


def test_the_record_keeps_what_kept_outputs_were_predicted_with(tmp_path):
    """--continue_prediction keeps finished outputs: their entry says what they were predicted with, whatever this
    run would give them, and a different modality is returned to be reported. The file's mode is the outputs'."""
    record_decisions(str(tmp_path), {"a": CaseModality("MR", BY_FLAG)})
    conflicts = record_decisions(str(tmp_path), {"a": CaseModality("CT", BY_RULES), "b": CaseModality("CT", BY_RULES),
                                                 "c": CaseModality("CT", BY_RULES)}, kept=["a", "c"])
    record = json.loads((tmp_path / "modalities.json").read_text())
    assert record["a"] == {"modality": "MR", "decided_by": "-m", "checked": False}
    assert record["b"]["modality"] == "CT" and record["c"]["modality"] is None
    assert conflicts == [("a", "MR", "CT")]
    (tmp_path / "beside.txt").write_text("x")  # created as nnU-Net creates its outputs: mode from the umask
    assert (tmp_path / "modalities.json").stat().st_mode & 0o777 == (tmp_path / "beside.txt").stat().st_mode & 0o777
