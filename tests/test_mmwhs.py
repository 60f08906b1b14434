"""nnUNetv2_convert_mmwhs on generated folders in the official MM-WHS 2017 layout: conversion, label mapping (and the
planted stray 421), geometry, split files, the untouched source, reruns, and the errors users will meet."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from damaged_files import corrupt_gzip, overstate_slices, truncate_half
from nnunet_cin.dataset_conversion import synthetic
from nnunet_cin.dataset_conversion.mmwhs import MMWHSError, convert_mmwhs

SHAPE = (20, 20, 20)
N_CT, N_MR = 4, 3


def tree_digest(folder):
    """Names, contents and modification times of every file below folder."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
            h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


def read(path):
    return sitk.ReadImage(str(path))


def array(path):
    return sitk.GetArrayFromImage(read(path))


def original_label(modality, index, seed=0):
    """The 0..7 label that write_mmwhs_layout turned into MM-WHS values (same generator, same case seed)."""
    case_seed = synthetic._case_seed(seed, f"mmwhs_{modality.lower()}_train", index)
    return sitk.GetArrayFromImage(synthetic.generate_case(modality, case_seed, SHAPE)[1])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mmwhs") / "MM-WHS 2017"  # a space in the path, as downloads often have
    return synthetic.write_mmwhs_layout(folder, n_ct=N_CT, n_mr=N_MR, shape=SHAPE, seed=0,
                                        plant_421_in="mr_train_1002", with_test=True)


def test_command_converts_the_layout(source, nnunet_env):
    before = tree_digest(source)
    command = shutil.which("nnUNetv2_convert_mmwhs") or str(Path(sys.executable).parent / "nnUNetv2_convert_mmwhs")
    result = subprocess.run([command, "-i", str(source), "--stratified-splits"], env=os.environ, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "mr_train/mr_train_1002_label.nii.gz: 5 voxels of value 421 set to 420 (LA)" in result.stdout
    assert result.stdout.count("value 421") == 1
    assert tree_digest(source) == before

    out = nnunet_env.raw / "Dataset601_MMWHS"
    train = [f"ct_{1001 + i}" for i in range(N_CT)] + [f"mr_{1001 + i}" for i in range(N_MR)]
    test = [f"ct_{2001 + i}" for i in range(N_CT)] + [f"mr_{2001 + i}" for i in range(N_MR)]
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in train]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in train]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [f"{c}_0000.nii.gz" for c in test]
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr"]

    dj = json.loads((out / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "MYO": 1, "LA": 2, "LV": 3, "RA": 4, "RV": 5, "AA": 6, "PA": 7}
    assert dj["numTraining"] == N_CT + N_MR and dj["file_ending"] == ".nii.gz"
    assert dj["channel_names"] == {"0": "image"}
    assert dj["modalities"] == ["CT", "MR"] and dj["modality_patterns"] == {"CT": "^ct_", "MR": "^mr_"}
    assert dj["conversion"]["fixed_label_values"] == {"mr_1002": {"421->420": 5}}

    for modality, n in (("CT", N_CT), ("MR", N_MR)):
        prefix = modality.lower()
        for i in range(n):
            src_image = source / f"{prefix}_train" / f"{prefix}_train_{1001 + i}_image.nii.gz"
            src_label = source / f"{prefix}_train" / f"{prefix}_train_{1001 + i}_label.nii.gz"
            image, label = out / "imagesTr" / f"{prefix}_{1001 + i}_0000.nii.gz", out / "labelsTr" / f"{prefix}_{1001 + i}.nii.gz"
            # labels: back to the generator's 0..7 (the stray 421 voxels included, they were left atrium)
            converted = array(label)
            assert converted.dtype == np.uint8
            assert np.array_equal(converted, original_label(modality, i))
            # geometry kept exactly, image voxels unchanged
            for a, b in ((read(image), read(src_image)), (read(label), read(src_label))):
                assert (a.GetSpacing(), a.GetOrigin(), a.GetDirection(), a.GetSize()) == \
                       (b.GetSpacing(), b.GetOrigin(), b.GetDirection(), b.GetSize())
            assert image.read_bytes() == src_image.read_bytes()
    assert len({read(out / "imagesTr" / f"{c}_0000.nii.gz").GetDirection() for c in train}) > 1  # variety kept

    # nnU-Net's own check accepts the dataset
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(out), 1)

    # 5 folds: each training case validated exactly once, each modality spread evenly
    splits = json.loads((nnunet_env.preprocessed / "Dataset601_MMWHS" / "splits_final.json").read_text())
    assert len(splits) == 5
    assert sorted(c for s in splits for c in s["val"]) == sorted(train)
    for s in splits:
        assert sorted(s["train"] + s["val"]) == sorted(train)
    for prefix, n in (("ct", N_CT), ("mr", N_MR)):
        per_fold = [sum(c.startswith(prefix) for c in s["val"]) for s in splits]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == n


def test_rerun_replaces_its_own_output(source, tmp_path):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    before = tree_digest(source)
    out = convert_mmwhs(source, raw_root=raw, preprocessed_root=pre, stratified_splits=True, log=lambda m: None)
    first = {p.relative_to(out): array(p) for p in out.rglob("*.nii.gz")}
    first_json = (out / "dataset.json").read_text()
    first_splits = (pre / out.name / "splits_final.json").read_text()
    (out / "imagesTr" / "ct_9999_0000.nii.gz").write_bytes(b"stale")  # left over from something else
    messages = []
    again = convert_mmwhs(source, raw_root=raw, preprocessed_root=pre, log=messages.append)
    assert again == out
    assert {p.relative_to(out) for p in out.rglob("*.nii.gz")} == set(first)
    assert all(np.array_equal(array(out / rel), a) for rel, a in first.items())
    assert (out / "dataset.json").read_text() == first_json
    # no split option: the existing splits file is kept, and said so
    assert (pre / out.name / "splits_final.json").read_text() == first_splits
    assert any("kept existing" in m for m in messages)
    assert not any(p.name.startswith(".") for p in raw.iterdir())  # no partial folder left behind
    assert tree_digest(source) == before


def test_invalid_label_value_is_rejected_before_writing(tmp_path):
    src = synthetic.write_mmwhs_layout(tmp_path / "src", n_ct=1, n_mr=2, shape=(12, 12, 12),
                                       plant_421_in="mr_train_1001", invalid_value_in=("mr_train_1002", 333))
    # a second bad file: both are named in one error
    ct_label = src / "ct_train" / "ct_train_1001_label.nii.gz"
    lab = read(ct_label)
    a = sitk.GetArrayFromImage(lab)
    a[0, 0, 0] = 999
    bad = sitk.GetImageFromArray(a)
    bad.CopyInformation(lab)
    sitk.WriteImage(bad, str(ct_label))
    before = tree_digest(src)
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    raw.mkdir()
    with pytest.raises(MMWHSError) as e:
        convert_mmwhs(src, raw_root=raw, preprocessed_root=pre, stratified_splits=True, log=lambda m: None)
    msg = str(e.value)
    assert "mr_train_1002_label.nii.gz" in msg and "333 (3 voxels)" in msg
    assert "ct_train_1001_label.nii.gz" in msg and "999 (1 voxels)" in msg
    assert "421" not in msg.split("(421 is fixed")[0]  # the planted 421 is not a complaint
    assert list(raw.iterdir()) == [] and not pre.exists()
    assert tree_digest(src) == before

    # the command says the same on stderr and exits 1
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre))
    result = subprocess.run([sys.executable, "-m", "nnunet_cin.dataset_conversion.mmwhs", "-i", str(src)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "333" in result.stderr and "mr_train_1002_label" in result.stderr
    assert list(raw.iterdir()) == []


def test_bad_input_errors_name_the_problem(source, tmp_path):
    raw = tmp_path / "raw"
    convert = lambda src, **kw: convert_mmwhs(src, raw_root=raw, preprocessed_root=tmp_path / "pre",  # noqa: E731
                                             log=lambda m: None, **kw)
    with pytest.raises(MMWHSError, match="does not exist"):
        convert(tmp_path / "nowhere")

    small = synthetic.write_mmwhs_layout(tmp_path / "small", n_ct=2, n_mr=1, shape=(8, 8, 8))
    only_ct = tmp_path / "only_ct"
    shutil.copytree(small / "ct_train", only_ct / "ct_train")
    with pytest.raises(MMWHSError, match=r"missing folder\(s\) \['mr_train'\]"):
        convert(only_ct)

    broken = tmp_path / "broken"
    shutil.copytree(small, broken)
    (broken / "ct_train" / "ct_train_1002_label.nii.gz").unlink()
    (broken / "mr_train" / "mr_train_1001_image.nii.gz").unlink()
    shutil.copy(small / "ct_train" / "ct_train_1001_image.nii.gz", broken / "mr_train" / "ct_train_1001_image.nii.gz")
    with pytest.raises(MMWHSError) as e:
        convert(broken)
    msg = str(e.value)
    assert "ct_train_1002_image.nii.gz: no label file ct_train_1002_label.nii.gz" in msg
    assert "mr_train_1001_label.nii.gz: label without image" in msg
    assert "a ct_train file in mr_train/" in msg

    mismatch = tmp_path / "mismatch"
    shutil.copytree(small, mismatch)
    other = synthetic.write_mmwhs_layout(tmp_path / "other", n_ct=1, n_mr=0, shape=(8, 8, 9))
    shutil.copy(other / "ct_train" / "ct_train_1001_label.nii.gz", mismatch / "ct_train" / "ct_train_1001_label.nii.gz")
    with pytest.raises(MMWHSError, match=r"ct_train_1001_label.nii.gz: size \(9, 8, 8\) differs"):
        convert(mismatch)
    assert not raw.exists() or list(raw.iterdir()) == []

    # the id is taken by another dataset, or the folder name by data we did not write
    (raw / "Dataset601_Other").mkdir(parents=True)
    with pytest.raises(MMWHSError, match="already used by"):
        convert(small)
    (raw / "Dataset601_Other").rmdir()
    (raw / "Dataset601_MMWHS").mkdir()
    (raw / "Dataset601_MMWHS" / "dataset.json").write_text("{}")
    with pytest.raises(MMWHSError, match="not written by nnUNetv2_convert_mmwhs"):
        convert(small)
    assert (raw / "Dataset601_MMWHS" / "dataset.json").read_text() == "{}"
    with pytest.raises(MMWHSError, match="nnUNet_raw is not set"):
        env = os.environ.pop("nnUNet_raw", None)
        try:
            convert_mmwhs(small, log=lambda m: None)
        finally:
            if env is not None:
                os.environ["nnUNet_raw"] = env


# the reproductions of issue "no silent corruption": each damage alone, then all at once (one message)
DAMAGES = {
    "truncated label": ("ct_train/ct_train_1001_label.nii.gz", truncate_half, "is truncated"),
    "truncated image": ("mr_train/mr_train_1001_image.nii.gz", truncate_half, "is truncated"),
    "truncated test image": ("ct_test/ct_test_2001_image.nii.gz", truncate_half, "is truncated"),
    "corrupt gzip": ("ct_train/ct_train_1002_image.nii.gz", corrupt_gzip, "is a corrupt gzip file"),
    "header promises more voxels": ("mr_train/mr_train_1002_label.nii.gz", overstate_slices,
                                    "but its header promises"),
}


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    return synthetic.write_mmwhs_layout(tmp_path_factory.mktemp("intact") / "src", n_ct=2, n_mr=2, shape=(12, 12, 16),
                                        with_test=True)


def assert_rejected(src, tmp_path, expected):
    """The conversion of src fails naming every (file, reason) of expected, writes nothing, leaves src untouched."""
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    before = tree_digest(src)
    with pytest.raises(MMWHSError) as e:
        convert_mmwhs(src, raw_root=raw, preprocessed_root=pre, stratified_splits=True, log=lambda m: None)
    lines = str(e.value).splitlines()
    assert lines[0] == f"{len(expected)} bad source file(s), nothing was written:"
    for file, reason in expected:
        assert any(line.strip().startswith(f"{src / file}: ") and reason in line for line in lines), (file, lines)
    assert not raw.exists() and not pre.exists()
    assert tree_digest(src) == before
    return str(e.value)


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_source_file_is_named_before_writing(intact, tmp_path, damage):
    src = tmp_path / "src"
    shutil.copytree(intact, src)
    file, damage_file, reason = DAMAGES[damage]
    damage_file(src / file)
    if damage == "truncated label":  # what happened before: SimpleITK reads the cut-off label, zeros for the rest
        half = array(src / file)
        full = array(intact / file)
        assert half.shape == full.shape and np.count_nonzero(half) < np.count_nonzero(full)
    assert_rejected(src, tmp_path, [(file, reason)])


def test_all_damaged_source_files_in_one_message(intact, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(intact, src)
    for file, damage_file, _ in DAMAGES.values():
        damage_file(src / file)
    # a label value problem in an intact file is listed with them
    lab = read(src / "mr_train" / "mr_train_1001_label.nii.gz")
    a = sitk.GetArrayFromImage(lab)
    a[0, 0, 0] = 333
    bad = sitk.GetImageFromArray(a)
    bad.CopyInformation(lab)
    sitk.WriteImage(bad, str(src / "mr_train" / "mr_train_1001_label.nii.gz"))
    expected = [(f, r) for f, _, r in DAMAGES.values()] + [("mr_train/mr_train_1001_label.nii.gz", "333 (1 voxels)")]
    assert_rejected(src, tmp_path, expected)

    # the command: exit 1, the list on stderr, an earlier conversion left as it was
    raw, pre = tmp_path / "raw2", tmp_path / "pre2"
    earlier = convert_mmwhs(intact, raw_root=raw, preprocessed_root=pre, log=lambda m: None)
    earlier_digest = tree_digest(earlier)
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre))
    result = subprocess.run([sys.executable, "-m", "nnunet_cin.dataset_conversion.mmwhs", "-i", str(src)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "6 bad source file(s), nothing was written" in result.stderr
    assert all(str(src / f) in result.stderr for f, _ in expected)
    assert tree_digest(earlier) == earlier_digest and [p.name for p in raw.iterdir()] == [earlier.name]


def write_json(path, content):
    path.write_text(json.dumps(content))
    return path


def datalist(prefix, train, val, image_suffix="image"):
    """A split file as released with the paper (MI-Seg dataset/MM-WHS/*.json): Decathlon datalists of file paths."""
    entry = lambda n: {"label": f"{prefix}_train/{prefix}_train_{n}_label_corrected.nii.gz",  # noqa: E731
                       "image": f"{prefix}_train/{prefix}_train_{n}_{image_suffix}.nii.gz"}
    return {"labels": {"0": "background"}, "modality": 0, "name": "MM-WHS", "numTraining": len(train),
            "training": [entry(n) for n in train], "validation": [entry(n) for n in val],
            "test": [entry(n) for n in val]}


def test_paper_split_files(source, tmp_path):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    ct1 = write_json(tmp_path / "CT_fold1.json", datalist("ct", [1001, 1002], [1003, 1004]))
    ct2 = write_json(tmp_path / "CT_fold2.json", datalist("ct", [1003, 1004], [1001, 1002]))
    mr = write_json(tmp_path / "MR.json", datalist("mr", [1001, 1003], [1002], "image_corrected"))
    messages = []
    out = convert_mmwhs(source, raw_root=raw, preprocessed_root=pre, splits=[ct1, ct2, mr], log=messages.append)
    splits = json.loads((pre / out.name / "splits_final.json").read_text())
    assert splits == [
        {"train": ["ct_1001", "ct_1002", "mr_1001", "mr_1003"], "val": ["ct_1003", "ct_1004", "mr_1002"]},
        {"train": ["ct_1003", "ct_1004", "mr_1001", "mr_1003"], "val": ["ct_1001", "ct_1002", "mr_1002"]},
    ]
    assert "  fold 0: CT 2 train / 2 val; MR 2 train / 1 val" in messages

    # nnU-Net's own splits_final.json layout and single {"train", "val"} dicts are read too
    nnunet_layout = write_json(tmp_path / "splits.json", [{"train": ["ct_1001", "mr_train_1001"],
                                                           "val": ["ct_1002", "mr_1002"]}])
    convert_mmwhs(source, raw_root=raw, preprocessed_root=pre, splits=[nnunet_layout], log=messages.append)
    assert json.loads((pre / out.name / "splits_final.json").read_text()) == [
        {"train": ["ct_1001", "mr_1001"], "val": ["ct_1002", "mr_1002"]}]
    assert any("fold 0 leaves out training case(s) ['ct_1003', 'ct_1004', 'mr_1003']" in m for m in messages)

    # errors name the file and the case; nothing is rewritten
    before = tree_digest(out)
    cases = [(datalist("ct", [1001], [1009]), r"\['ct_1009'\] are not training cases"),
             (datalist("ct", [1001, 1002], []), "no validation cases"),
             (datalist("ct", [1001, 1002], [1002]), r"\['ct_1002'\] are in both"),
             ({"folds": []}, "unknown format"),
             ({"train": ["heart_1"], "val": ["ct_1001"]}, "names no MM-WHS case")]
    for content, match in cases:
        bad = write_json(tmp_path / "bad.json", content)
        with pytest.raises(MMWHSError, match=match) as e:
            convert_mmwhs(source, raw_root=raw, preprocessed_root=pre, splits=[bad], log=lambda m: None)
        assert str(bad) in str(e.value)
    with pytest.raises(MMWHSError, match=r"2 fold\(s\) for \['MR'\] but 3 for another modality; give 1 or 3"):
        three = write_json(tmp_path / "CT_fold3.json", datalist("ct", [1001], [1002]))
        mr2 = write_json(tmp_path / "MR2.json", datalist("mr", [1001], [1003]))
        convert_mmwhs(source, raw_root=raw, preprocessed_root=pre, splits=[ct1, ct2, three, mr, mr2],
                      log=lambda m: None)
    assert tree_digest(out) == before


def test_n4_corrects_mr_only(tmp_path):
    src = synthetic.write_mmwhs_layout(tmp_path / "src", n_ct=1, n_mr=1, shape=(24, 24, 24), seed=3)
    out = convert_mmwhs(src, raw_root=tmp_path / "raw", preprocessed_root=tmp_path / "pre", n4=True,
                        log=lambda m: None)
    assert json.loads((out / "dataset.json").read_text())["conversion"]["n4_mr"] is True
    ct_src, ct_out = src / "ct_train" / "ct_train_1001_image.nii.gz", out / "imagesTr" / "ct_1001_0000.nii.gz"
    assert ct_out.read_bytes() == ct_src.read_bytes()
    mr_src, mr_out = read(src / "mr_train" / "mr_train_1001_image.nii.gz"), read(out / "imagesTr" / "mr_1001_0000.nii.gz")
    assert (mr_out.GetSpacing(), mr_out.GetOrigin(), mr_out.GetDirection(), mr_out.GetSize()) == \
           (mr_src.GetSpacing(), mr_src.GetOrigin(), mr_src.GetDirection(), mr_src.GetSize())
    assert mr_out.GetPixelID() == sitk.sitkFloat32
    # the bias field is reduced: the homogeneous tissue around the heart varies less after correction
    label = array(src / "mr_train" / "mr_train_1001_label.nii.gz")
    before, after = sitk.GetArrayFromImage(mr_src), sitk.GetArrayFromImage(mr_out)
    tissue = (label == 0) & (before > 100)  # tissue is about 220 times the bias field, air about 8 plus noise
    cv = lambda a: a[tissue].std() / a[tissue].mean()  # noqa: E731
    assert cv(after) < 0.9 * cv(before)
