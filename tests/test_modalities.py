"""Modality rules (dataset.json keys) and the checks nnUNetv2_plan_and_preprocess_cin runs before writing anything."""
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nnunet_cin.modalities import (ModalityError, ModalityRules, case_id_from_image_file, case_id_from_label_file,
                                   case_id_from_preprocessed_file, case_ids_from_image_files, channel_of_image_file)
from nnunet_cin.planning.plan_and_preprocess import check_dataset
from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset
from nnunet_helpers import main_in_process

RULES = {"modalities": ["CT", "MR"], "modality_patterns": {"CT": "^ct_", "MR": "^mr_"}}


def rules(**changes):
    return ModalityRules.from_dataset_json({"channel_names": {"0": "image"}, **RULES, **changes}, "x/dataset.json")


def raises(fn, *fragments):
    with pytest.raises(ModalityError) as e:
        fn()
    for f in fragments:
        assert f in str(e.value), f"{f!r} not in error message:\n{e.value}"
    return str(e.value)


def tree_hash(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- rules ------------------------------------------------------------------------------------------------------

def test_patterns_overrides_and_indices():
    r = rules(case_modalities={"ct_odd": "MR"})
    assert r.modalities == ["CT", "MR"]
    assert r.modality_of("ct_0001") == "CT" and r.modality_of("mr_7") == "MR"
    assert r.modality_of("ct_odd") == "MR"  # case_modalities wins over the patterns
    assert (r.index_of("ct_0001"), r.index_of("mr_7"), r.index_of("ct_odd")) == (0, 1, 1)
    assert r.index_of_name("MR") == 1
    assert r.resolve(["ct_1", "mr_2", "ct_odd"]) == {"ct_1": "CT", "mr_2": "MR", "ct_odd": "MR"}
    # re.search semantics: unanchored patterns match anywhere in the identifier
    r2 = rules(modality_patterns={"CT": "_ct", "MR": "_mr$"})
    assert r2.modality_of("heart_ct_3") == "CT" and r2.modality_of("heart_mr") == "MR"
    # order of "modalities" is the conditioning order, whatever the order of the patterns
    r3 = rules(modalities=["MR", "CT"])
    assert r3.index_of("ct_1") == 1 and r3.index_of_name("MR") == 0
    assert ModalityRules.from_dataset_json(r.to_dict()).resolve(["ct_odd", "ct_1"]) == {"ct_odd": "MR", "ct_1": "CT"}


def test_single_modality_needs_no_pattern():
    r = ModalityRules.from_dataset_json({"modalities": ["MR"]})
    assert r.modality_of("anything") == "MR" and r.index_of("x") == 0


def test_rule_errors_name_the_key_and_the_fix():
    msg = raises(lambda: ModalityRules.from_dataset_json({"channel_names": {"0": "image"}}, "D/dataset.json"),
                 "D/dataset.json", '"modalities"', '"modality_patterns"', "^ct_")
    assert "case_modalities" in msg  # the example shows every key
    raises(lambda: rules(modality_patterns=None), '"modality_patterns"', "CT", "MR")
    raises(lambda: rules(modalities="CT"), '"modalities"', "list")
    raises(lambda: rules(modalities=["CT", "CT"]), "more than once", "CT")
    raises(lambda: rules(modality_patterns={"CT": "^ct_", "MRI": "^mr_"}), '"MRI"', '"modalities"')
    raises(lambda: rules(modality_patterns={"CT": "^ct_(", "MR": "^mr_"}), '"modality_patterns"["CT"]', "^ct_(",
           "regular expression")
    raises(lambda: rules(case_modalities={"ct_7": "PET"}), "ct_7", "PET", "['CT', 'MR']")
    r = rules()
    raises(lambda: r.index_of_name("PET"), "PET", "['CT', 'MR']")
    raises(lambda: r.modality_of("pet_0001"), "pet_0001", "matches none", "case_modalities")
    raises(lambda: rules(modality_patterns={"CT": "_0", "MR": "^mr_"}).modality_of("mr_0001"), "mr_0001",
           "several", "_0", "^mr_")
    # resolve reports every bad case at once
    raises(lambda: r.resolve(["ct_1", "pet_1", "us_2"]), "pet_1", "us_2", "2 case(s)")
    raises(lambda: rules(case_modalities={"ct_9999": "MR"}).check_case_modalities_exist(["ct_0000", "mr_0000"]),
           "ct_9999", "do not exist")


def test_case_ids_from_image_files():
    assert case_id_from_image_file("/a/b/ct_0003_0000.nii.gz", ".nii.gz") == "ct_0003"
    assert case_id_from_image_file("mr_12_0001.mha", ".mha") == "mr_12"
    assert case_id_from_image_file("heart.nii.gz", ".nii.gz") == "heart"  # no channel suffix: ending removed only
    assert case_ids_from_image_files(["x/ct_1_0000.nii.gz", "x/ct_1_0001.nii.gz", "mr_2_0000.nii.gz"],
                                     ".nii.gz") == ["ct_1", "mr_2"]


def test_case_ids_of_labels_outputs_and_preprocessed_cases():
    # a label or prediction keeps a trailing 4-digit number: it is part of the case id, not a channel
    assert case_id_from_label_file("/pred/ct_0003.nii.gz", ".nii.gz") == "ct_0003"
    assert case_id_from_label_file("labelsTr/mr_12.mha", ".mha") == "mr_12"
    assert case_id_from_image_file("/pred/ct_0003.nii.gz", ".nii.gz") == "ct"  # why the two must not be mixed up
    for f in ("/pre/ct_0003", "/pre/ct_0003.b2nd", "/pre/ct_0003_seg.b2nd", "ct_0003.pkl", "ct_0003.npz",
              "ct_0003.npy", "ct_0003_seg.npy", "C:\\pre\\ct_0003.pkl"):
        assert case_id_from_preprocessed_file(f) == "ct_0003", f
    assert case_id_from_preprocessed_file("/pre/heart.v2") == "heart.v2"  # a dot in a truncated name stays
    assert channel_of_image_file("/in/ct_0003_0012.nii.gz", ".nii.gz") == 12
    assert channel_of_image_file("/in/heart.nii.gz", ".nii.gz") is None


def test_case_ids_agree_with_nnunets_own_listing(tmp_path):
    """nnU-Net's identifiers of an image folder and of a preprocessed folder = ours of the same files."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.utils import get_identifiers_from_splitted_dataset_folder
    images, pre = tmp_path / "imagesTs", tmp_path / "pre"
    images.mkdir(), pre.mkdir()
    for f in ("ct_0003_0000.nii.gz", "ct_0003_0001.nii.gz", "mr_12_0000.nii.gz"):
        (images / f).touch()
    for f in ("ct_0003.b2nd", "ct_0003_seg.b2nd", "ct_0003.pkl", "mr_12.b2nd", "mr_12_seg.b2nd", "mr_12.pkl"):
        (pre / f).touch()
    theirs = sorted(get_identifiers_from_splitted_dataset_folder(str(images), ".nii.gz"))
    assert theirs == sorted(case_ids_from_image_files(os.listdir(images), ".nii.gz")) == ["ct_0003", "mr_12"]
    theirs = sorted(nnUNetDatasetBlosc2.get_identifiers(str(pre)))
    assert theirs == sorted({case_id_from_preprocessed_file(f) for f in os.listdir(pre)}) == ["ct_0003", "mr_12"]


def test_resolve_with_a_forced_modality():
    r = rules()
    assert r.resolve(["ct_1", "pet_1"], modality="MR") == {"ct_1": "MR", "pet_1": "MR"}  # no rule needed
    raises(lambda: r.resolve(["ct_1"], modality="PET"), "PET", "['CT', 'MR']")


# --- the dataset checks of nnUNetv2_plan_and_preprocess_cin ----------------------------------------------------------

BAD = {  # dataset id -> (dataset.json changes, fragments the message must hold)
    901: ({"modalities": None, "modality_patterns": None}, ['"modalities"', '"modality_patterns"', "e.g."]),
    902: ({"modality_patterns": None}, ['"modality_patterns"']),
    903: ({"modality_patterns": {"CT": "^ct_", "PET": "^mr_"}}, ['"PET"', '"modalities"']),
    904: ({"case_modalities": {"ct_0001": "US"}}, ["ct_0001", '"US"']),
    905: ({"modality_patterns": {"CT": "^ct_[", "MR": "^mr_"}}, ['"modality_patterns"["CT"]', "regular expression"]),
    906: ({"modality_patterns": {"CT": "^ct_", "MR": "^mri_"}}, ['"mr_0000"', "matches none"]),
    907: ({"modality_patterns": {"CT": "_000", "MR": "^mr_"}}, ['"mr_0000"', "several"]),
    908: ({"case_modalities": {"ct_9999": "MR"}}, ["ct_9999", "do not exist"]),
    909: ({"modalities": ["CT", "MR", "PET"], "modality_patterns": {"CT": "^ct_", "MR": "^mr_", "PET": "^pet_"}},
          ["PET", "no training case"]),
}


@pytest.fixture
def bad_datasets(nnunet_env):
    good = write_nnunet_dataset(nnunet_env.raw, 900, cases_per_modality={"CT": 2, "MR": 2}, shape=(16, 16, 16))
    for d, (changes, _) in BAD.items():
        folder = nnunet_env.raw / f"Dataset{d}_Bad"
        shutil.copytree(good, folder)
        dj = json.loads((folder / "dataset.json").read_text())
        for k, v in changes.items():
            if v is None:
                dj.pop(k)
            else:
                dj[k] = v
        (folder / "dataset.json").write_text(json.dumps(dj))
    return nnunet_env


def test_check_dataset_accepts_good_and_names_every_bad_case(bad_datasets):
    (r, case_modality), schemes = check_dataset(str(bad_datasets.raw / "Dataset900_SyntheticHeart"))
    assert case_modality == {"ct_0000": "CT", "ct_0001": "CT", "mr_0000": "MR", "mr_0001": "MR"}
    assert r.modalities == ["CT", "MR"] and schemes == {"CT": "CTClipZScoreNormalization", "MR": "ZScoreNormalization"}
    for d, (_, fragments) in BAD.items():
        raises(lambda: check_dataset(str(bad_datasets.raw / f"Dataset{d}_Bad")), *fragments)


def test_cli_fails_before_writing_anything(bad_datasets):
    """Every bad dataset through the command's main() (in this process), and the installed console script once:
    exit status 2, a message naming the case/key, nothing in nnUNet_preprocessed, raw data unchanged."""
    env = bad_datasets
    before = tree_hash(env.raw)
    from nnunet_cin.planning.plan_and_preprocess import main
    out = {}
    for d in sorted(BAD):
        ran = main_in_process(main, ["-d", d, "-c", "3d_fullres", "-np", "1", "-npfp", "1"])
        out[str(d)] = [ran.returncode, ran.stderr, os.listdir(os.environ["nnUNet_preprocessed"])]
    # a good dataset listed after a bad one: still nothing written (all datasets are checked first)
    ran = main_in_process(main, ["-d", "900", "906", "-c", "3d_fullres"])
    out["900+906"] = [ran.returncode, ran.stderr, os.listdir(os.environ["nnUNet_preprocessed"])]
    for d, (_, fragments) in BAD.items():
        rc, err, written = out[str(d)]
        assert rc == 2 and written == [], (d, rc, err, written)
        for f in fragments:
            assert f in err, (d, f, err)
    rc, err, written = out["900+906"]
    assert rc == 2 and written == [] and "mr_0000" in err

    res = subprocess.run(["nnUNetv2_plan_and_preprocess_cin", "-d", "901", "-c", "3d_fullres"], env=os.environ,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and '"modalities"' in res.stderr and '"modality_patterns"' in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert list(env.preprocessed.iterdir()) == []
    assert tree_hash(env.raw) == before
