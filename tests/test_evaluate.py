import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_cin.evaluation.evaluate import (compute_surface_metrics, format_table, label_names_of, main,
                                 run_cli, summarize_by_modality, surface_distance_metrics)

LABELS = {"background": 0, "MYO": 1, "LV": 2}
DATASET_JSON = {"channel_names": {"0": "image"}, "labels": LABELS, "numTraining": 4, "file_ending": ".nii.gz",
                "modalities": ["CT", "MR"], "modality_patterns": {"CT": "^ct_", "MR": "^mr_"}}


# --- surface distances, checked against hand computations -------------------------------------------------------

def test_surface_distances_hand_computed_points():
    # ref: one voxel at (0,0,0); pred: voxels at (0,0,3) and (0,0,10). Directed distances: ref->pred {3},
    # pred->ref {3, 10}. HD95 = 95th percentile of [3, 3, 10] = 3 + 0.9 * 7 = 9.3; ASSD = (3 + 6.5) / 2 = 4.75
    ref = np.zeros((3, 3, 12), bool)
    pred = np.zeros_like(ref)
    ref[0, 0, 0] = True
    pred[0, 0, 3] = pred[0, 0, 10] = True
    r = surface_distance_metrics(ref, pred, (1, 1, 1))
    assert r["HD95"] == pytest.approx(9.3) and r["ASSD"] == pytest.approx(4.75)
    # spacing scales the axis it belongs to, and only that one
    r = surface_distance_metrics(ref, pred, (5, 7, 2))
    assert r["HD95"] == pytest.approx(18.6) and r["ASSD"] == pytest.approx(9.5)


def test_surface_distances_planes_and_cube():
    # two full planes 3 slices apart, slice spacing 2.5: every surface voxel is 7.5 away from the other surface
    ref = np.zeros((8, 5, 6), bool)
    pred = np.zeros_like(ref)
    ref[2], pred[5] = True, True
    r = surface_distance_metrics(ref, pred, (2.5, 1, 1))
    assert r["HD95"] == pytest.approx(7.5) and r["ASSD"] == pytest.approx(7.5)
    # identical masks: 0; one empty mask: undefined (NaN)
    cube = np.zeros((10, 10, 10), bool)
    cube[2:7, 3:8, 1:6] = True
    assert surface_distance_metrics(cube, cube, (1, 2, 3)) == {"HD95": 0.0, "ASSD": 0.0}
    assert all(math.isnan(v) for v in surface_distance_metrics(cube, np.zeros_like(cube), (1, 1, 1)).values())
    # a cube grown by one voxel on one face along axis 2 (spacing 3): surface points move by at most 3
    grown = cube.copy()
    grown[2:7, 3:8, 6] = True
    r = surface_distance_metrics(cube, grown, (1, 1, 3))
    assert 0 < r["ASSD"] < r["HD95"] <= 3 + 1e-9


def write_image(path, array_zyx, spacing_xyz=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    img = sitk.GetImageFromArray(array_zyx.astype(np.uint8))
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))


def test_surface_metrics_from_files_use_spacing_in_numpy_axis_order(tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    ref = np.zeros((4, 5, 12), np.uint8)  # (z, y, x)
    pred = np.zeros_like(ref)
    ref[1, 2, 2] = 1
    pred[1, 2, 6] = 1  # 4 voxels apart along x
    ref[0, 0, 0] = pred[3, 0, 0] = 2  # 3 voxels apart along z
    write_image(tmp_path / "r.nii.gz", ref, spacing_xyz=(0.5, 1.0, 4.0))
    write_image(tmp_path / "p.nii.gz", pred, spacing_xyz=(0.5, 1.0, 4.0))
    r = compute_surface_metrics(str(tmp_path / "r.nii.gz"), str(tmp_path / "p.nii.gz"), SimpleITKIO(), [1, 2])
    assert r[1]["HD95"] == pytest.approx(4 * 0.5)
    assert r[2]["HD95"] == pytest.approx(3 * 4.0)


# --- summaries ------------------------------------------------------------------------------------------------------

def test_summarize_by_modality_accepts_nnunet_results_and_loaded_json_keys():
    def case(name, d1, d2):
        return {"prediction_file": f"/p/{name}.nii.gz", "reference_file": f"/r/{name}.nii.gz",
                "metrics": {1: {"Dice": d1}, 2: {"Dice": d2}}}
    results = {"metric_per_case": [case("ct_1", 1.0, 0.5), case("mr_1", 0.2, float("nan")), case("ct_2", 0.8, 0.7)]}
    s = summarize_by_modality(results, {"ct_1": "CT", "ct_2": "CT", "mr_1": "MR"}, ".nii.gz",
                              label_names_of(DATASET_JSON))
    assert s["modalities"] == ["CT", "MR"] and s["structures"] == ["MYO", "LV", "mean"]
    assert s["num_cases"] == {"CT": 2, "MR": 1} and s["cases"]["CT"] == ["ct_1", "ct_2"]
    assert s["per_modality"]["CT"]["MYO"]["Dice"] == pytest.approx(0.9)
    assert s["per_modality"]["CT"]["LV"]["Dice"] == pytest.approx(0.6)
    assert s["per_modality"]["CT"]["mean"]["Dice"] == pytest.approx(0.75)
    assert math.isnan(s["per_modality"]["MR"]["LV"]["Dice"])  # absent everywhere: NaN, skipped by the mean
    assert s["per_modality"]["MR"]["mean"]["Dice"] == pytest.approx(0.2)
    # summary.json as nnU-Net writes it has string keys; callables work as the modality lookup
    as_json = json.loads(json.dumps({"metric_per_case": [
        dict(c, metrics={str(k): v for k, v in c["metrics"].items()}) for c in results["metric_per_case"]]}))
    s2 = summarize_by_modality(as_json, lambda c: c[:2].upper(), ".nii.gz", label_names_of(DATASET_JSON))
    assert s2["per_modality"]["CT"]["mean"]["Dice"] == pytest.approx(0.75)
    assert "MYO" in format_table(s2) and "CT (n=2)" in format_table(s2)


def test_label_names_of_regions():
    dj = {"labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}}
    assert label_names_of(dj) == {"(1, 2, 3)": "whole", "(2, 3)": "core", "(3,)": "enhancing"}


# --- the command ----------------------------------------------------------------------------------------------------

def make_folders(tmp_path, dataset_json=DATASET_JSON):
    """ref/pred folders: CT cases predicted perfectly for MYO and half of LV, MR cases with MYO missed."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    for name in ("ct_001", "ct_002", "mr_001"):
        ref = np.zeros((8, 8, 8), np.uint8)
        ref[1:3, 1:3, 1:3] = 1  # MYO: 8 voxels
        ref[5:7, 5:7, 4:8] = 2  # LV: 16 voxels
        pred = ref.copy()
        if name.startswith("ct"):
            pred[5:7, 5:7, 6:8] = 0  # LV: 8 of 16 found -> Dice 2*8/(16+8) = 2/3
        else:
            pred[pred == 1] = 0  # MYO missed -> Dice 0; LV perfect
        write_image(ref_dir / f"{name}.nii.gz", ref, (1.0, 1.0, 2.0))
        write_image(pred_dir / f"{name}.nii.gz", pred, (1.0, 1.0, 2.0))
    (tmp_path / "dataset.json").write_text(json.dumps(dataset_json))
    return ref_dir, pred_dir


def test_cli_table_json_csv(tmp_path, capsys):
    ref_dir, pred_dir = make_folders(tmp_path)
    out = tmp_path / "res" / "table"
    # main: the console script's entry point, whose return value becomes the exit status
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-dj", str(tmp_path / "dataset.json"), "--hd95",
                 "-o", str(out), "-np", "1"]) is None
    printed = capsys.readouterr().out
    assert "CT (n=2)" in printed and "MR (n=1)" in printed and "HD95" in printed
    result = json.loads((tmp_path / "res" / "table.json").read_text())
    pm = result["summary"]["per_modality"]
    assert pm["CT"]["MYO"]["Dice"] == pytest.approx(1.0) and pm["CT"]["LV"]["Dice"] == pytest.approx(2 / 3)
    assert pm["MR"]["MYO"]["Dice"] == pytest.approx(0.0) and pm["MR"]["LV"]["Dice"] == pytest.approx(1.0)
    assert pm["CT"]["mean"]["Dice"] == pytest.approx((1 + 2 / 3) / 2)
    # LV (2x2x4 voxels, all surface) cut to 2x2x2 along x (spacing 1): ref->pred distances 8x0, 4x1, 4x2 mm,
    # pred->ref 8x0. Pooled 95th percentile: 2; ASSD: (12/16 + 0) / 2
    assert pm["CT"]["LV"]["HD95"] == pytest.approx(2.0) and pm["CT"]["LV"]["ASSD"] == pytest.approx(0.375)
    assert pm["CT"]["MYO"]["HD95"] == 0.0 and math.isnan(pm["MR"]["MYO"]["HD95"])
    assert {c["case"]: c["modality"] for c in result["metric_per_case"]} == \
        {"ct_001": "CT", "ct_002": "CT", "mr_001": "MR"}
    rows = list(csv.reader(open(tmp_path / "res" / "table.csv")))
    assert rows[0] == ["structure", "Dice CT", "Dice MR", "HD95 CT", "HD95 MR", "ASSD CT", "ASSD MR"]
    assert [r[0] for r in rows[1:]] == ["MYO", "LV", "mean"]
    assert float(rows[2][1]) == pytest.approx(2 / 3)


def test_cli_dataset_lookup_and_forced_modality(tmp_path, nnunet_env, capsys):
    ref_dir, pred_dir = make_folders(tmp_path)
    (nnunet_env.raw / "Dataset998_Eval").mkdir(parents=True)
    (nnunet_env.raw / "Dataset998_Eval" / "dataset.json").write_text(json.dumps(DATASET_JSON))
    result = run_cli(["-ref", str(ref_dir), "-pred", str(pred_dir), "-d", "998", "-m", "MR", "-np", "1"])
    assert result["summary"]["modalities"] == ["MR"] and result["summary"]["num_cases"] == {"MR": 3}
    assert (pred_dir / "summary_cin.json").is_file() and (pred_dir / "summary_cin.csv").is_file()


def test_cli_errors_name_the_problem(tmp_path, capsys):
    ref_dir, pred_dir = make_folders(tmp_path)
    dj = str(tmp_path / "dataset.json")
    with pytest.raises(SystemExit) as e:
        main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-dj", dj, "-m", "PET", "-np", "1"])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert "PET" in err and "CT" in err and "MR" in err
    # a case no rule matches stops the run before any metric is computed, naming the case
    write_image(ref_dir / "us_007.nii.gz", np.zeros((8, 8, 8), np.uint8))
    write_image(pred_dir / "us_007.nii.gz", np.zeros((8, 8, 8), np.uint8))
    with pytest.raises(SystemExit):
        main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-dj", dj, "-np", "1"])
    assert "us_007" in capsys.readouterr().err
    assert not (pred_dir / "summary_cin.json").exists()


# --- predictions that do not match their reference (issue "no silent corruption": its reproductions) ----------------

def reference_case():
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[1:3, 1:3, 1:3] = 1  # MYO: 8 voxels
    ref[5:7, 5:7, 4:8] = 2  # LV: 16 voxels
    return ref


# what is done to one prediction (otherwise equal to its reference, spacing (1, 1, 2)) -> the line that names it;
# "shape" is the array's (z, y, x), the messages give SimpleITK's (x, y, z) as for spacing, origin and direction
MISMATCHES = {
    "twice the spacing": ({"spacing_xyz": (2.0, 2.0, 4.0)},
                          "spacing (2, 2, 4) differs from the reference's (1, 1, 2)"),
    "50 mm origin shift": ({"origin": (50.0, 0.0, 0.0)}, "origin (50, 0, 0) differs from the reference's (0, 0, 0)"),
    "flipped direction": ({"direction": (-1.0, 0, 0, 0, 1, 0, 0, 0, 1)},
                          "direction (-1, 0, 0, 0, 1, 0, 0, 0, 1) differs from the reference's "
                          "(1, 0, 0, 0, 1, 0, 0, 0, 1)"),
    "label value the dataset lacks": ({"value": 9}, "value(s) 9 are not labels of the dataset (0, 1, 2)"),
    "another shape": ({"shape": (8, 8, 6)}, "shape (6, 8, 8) differs from the reference's (8, 8, 8)"),  # x, y, z
}


def mismatch_folders(tmp_path, damaged: dict, good=("ct_001", "mr_001")):
    """ref/pred folders: the `good` cases predicted perfectly, each case of `damaged` ({case: MISMATCHES key}) with
    that mismatch. The unknown value 9 replaces 4 of the 8 MYO voxels."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    for case in list(good) + list(damaged):
        write_image(ref_dir / f"{case}.nii.gz", reference_case(), (1.0, 1.0, 2.0))
        kw = {"spacing_xyz": (1.0, 1.0, 2.0)}
        pred = reference_case()
        if case in damaged:
            change = dict(MISMATCHES[damaged[case]][0])
            if "value" in change:
                pred[1, 1:3, 1:3] = change.pop("value")
            if "shape" in change:
                pred = pred[tuple(slice(0, n) for n in change.pop("shape"))]
            kw.update(change)
        write_image(pred_dir / f"{case}.nii.gz", pred, **kw)
    (tmp_path / "dataset.json").write_text(json.dumps(DATASET_JSON))
    return ref_dir, pred_dir, ["-ref", str(ref_dir), "-pred", str(pred_dir), "-dj", str(tmp_path / "dataset.json"),
                               "-np", "1"]


def problem_lines(err):
    return [line.strip() for line in err.splitlines() if line.startswith("  ")]


@pytest.mark.parametrize("origin", [0.0, -200.0])
def test_a_half_millimetre_shift_is_a_mismatch_and_float32_round_off_is_not(tmp_path, origin):
    """NRRD keeps double precision, so each file holds exactly the geometry given here. Round-off: what float32
    headers do to coordinates of a few hundred mm (300 mm * 2^-24 = 1.8e-5 mm) and to direction cosines."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_cin.evaluation.evaluate import case_mismatches
    spacing, o = (0.8, 0.8, 1.5), (origin, origin, origin)
    write_image(tmp_path / "ref.nrrd", reference_case(), spacing, o)
    cases = {"shift": dict(origin=(origin + 0.5, origin, origin)),
             "shift_z": dict(origin=(origin, origin, origin - 0.5)),
             "round_off": dict(origin=(origin + 2e-5, origin - 2e-5, origin + 1e-5),
                               spacing_xyz=tuple(float(np.float32(v)) for v in spacing),
                               direction=(1.0, 1e-7, -1e-7, -1e-7, 1.0, 1e-7, 1e-7, -1e-7, 1.0))}
    found = {}
    for name, change in cases.items():
        write_image(tmp_path / f"{name}.nrrd", reference_case(), **{"spacing_xyz": spacing, "origin": o, **change})
        found[name] = case_mismatches(str(tmp_path / "ref.nrrd"), str(tmp_path / f"{name}.nrrd"), SimpleITKIO(),
                                      (0, 1, 2))
    assert [kind for kind, _ in found["shift"]] == ["geometry"] and "origin" in found["shift"][0][1]
    assert [kind for kind, _ in found["shift_z"]] == ["geometry"]
    assert found["round_off"] == []


@pytest.mark.parametrize("mismatch", list(MISMATCHES))
def test_mismatched_prediction_stops_the_evaluation(tmp_path, capsys, mismatch):
    ref_dir, pred_dir, args = mismatch_folders(tmp_path, {"ct_002": mismatch})
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"1 of 3 prediction(s) in {pred_dir} do not match their reference in {ref_dir}; nothing was scored" in err
    assert problem_lines(err) == [f"ct_002: {MISMATCHES[mismatch][1]}"]
    flag = "--ignore_unknown_labels" if mismatch.startswith("label") else "--ignore_geometry_mismatch"
    assert flag in err and "broadcast" not in err
    assert not (pred_dir / "summary_cin.json").exists()


def test_all_mismatches_listed_then_scored_or_skipped_on_request(tmp_path, capsys):
    damaged = {f"ct_{i:03d}": m for i, m in enumerate(MISMATCHES, start=2)}
    ref_dir, pred_dir, args = mismatch_folders(tmp_path, damaged)
    with pytest.raises(SystemExit):
        main(args)
    err = capsys.readouterr().err
    assert "5 of 7 prediction(s)" in err
    assert problem_lines(err) == [f"{c}: {MISMATCHES[m][1]}" for c, m in damaged.items()]
    assert "--ignore_geometry_mismatch" in err and "--ignore_unknown_labels" in err

    # going on with geometry only: the unknown label still stops everything
    with pytest.raises(SystemExit):
        main(args + ["--ignore_geometry_mismatch"])
    err = capsys.readouterr().err
    unknown_label = MISMATCHES["label value the dataset lacks"][1]
    assert "1 of 7 prediction(s)" in err and problem_lines(err) == [f"ct_005: {unknown_label}"]
    assert not (pred_dir / "summary_cin.json").exists()

    # both flags: other spacing/origin/direction and the unknown value are scored and marked, another shape skipped
    # (-np 2: the worker-process path, the others run in this process)
    result = run_cli(args + ["--ignore_geometry_mismatch", "--ignore_unknown_labels", "-np", "2"])
    out = capsys.readouterr().out
    assert result["skipped"] == {"ct_006": [MISMATCHES["another shape"][1]]}
    assert result["mismatches"] == {c: [MISMATCHES[m][1]] for c, m in damaged.items() if c != "ct_006"}
    assert "4 case(s) scored although they do not match their reference:" in out
    assert "1 case(s) skipped: another shape than their reference:\n  ct_006: shape" in out
    per_case = {c["case"]: c for c in result["metric_per_case"]}
    assert sorted(per_case) == ["ct_001", "ct_002", "ct_003", "ct_004", "ct_005", "mr_001"]
    assert "mismatches" not in per_case["ct_001"] and per_case["ct_002"]["mismatches"] == \
        [MISMATCHES["twice the spacing"][1]]
    # scored voxel by voxel, as if on the reference's grid: the shifted, rescaled and flipped ones are "perfect"
    for c in ("ct_001", "ct_002", "ct_003", "ct_004"):
        assert per_case[c]["metrics"]["MYO"]["Dice"] == 1.0 and per_case[c]["metrics"]["LV"]["Dice"] == 1.0
    # 4 of the 8 MYO voxels hold the unknown 9, counted as background: Dice 2 * 4 / (8 + 4)
    assert per_case["ct_005"]["metrics"]["MYO"]["Dice"] == pytest.approx(2 / 3)
    assert result["summary"]["num_cases"] == {"CT": 5, "MR": 1}
    saved = json.loads((pred_dir / "summary_cin.json").read_text())
    assert saved["skipped"] == result["skipped"] and saved["mismatches"] == result["mismatches"]


def test_nnunet_means_match_nnunets_own_folder_evaluation(tmp_path):
    """_nnunet_means is a copy of nnU-Net's compute_metrics_on_folder means: same numbers on the same folder."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    ref_dir, pred_dir = make_folders(tmp_path)
    only_myo = reference_case() * (reference_case() == 1)  # LV in neither: its Dice is NaN, left out of the means
    write_image(ref_dir / "mr_002.nii.gz", only_myo, (1.0, 1.0, 2.0))
    write_image(pred_dir / "mr_002.nii.gz", only_myo, (1.0, 1.0, 2.0))
    ours = run_cli(["-ref", str(ref_dir), "-pred", str(pred_dir), "-dj", str(tmp_path / "dataset.json"), "-np", "1",
                    "-o", str(tmp_path / "ours")])
    theirs = compute_metrics_on_folder(str(ref_dir), str(pred_dir), None, SimpleITKIO(), ".nii.gz", [1, 2], None, 1)
    names = {1: "MYO", 2: "LV"}
    assert math.isnan(ours["metric_per_case"][-1]["metrics"]["LV"]["Dice"])
    # assert_equal: NaN equals NaN, nested dicts compared key by key
    np.testing.assert_equal(ours["nnunet_mean"], {names[k]: v for k, v in theirs["mean"].items()})
    np.testing.assert_equal(ours["nnunet_foreground_mean"], theirs["foreground_mean"])
    np.testing.assert_equal([c["metrics"] for c in ours["metric_per_case"]],
                            [{names[k]: v for k, v in c["metrics"].items()} for c in theirs["metric_per_case"]])
