"""nnunet-cin add-modality end to end: a tiny CT+MR model trained by the real nnUNetv2_train gains a T2-like modality
from 2 labelled cases (and from unlabelled images); the CT and MR predictions of the new model folder are bitwise
those of the original; the checkpoint grows by the new CIN rows only; the new modality predicts; bad requests are
refused before anything is written."""
import hashlib
import json
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_helpers import TINY_MODEL_DATASET, TINY_MODEL_ID, TINY_MODEL_TRAINER, copy_of_tiny_model

from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset

BASE_ID, BASE, TRAINER = TINY_MODEL_ID, TINY_MODEL_DATASET, TINY_MODEL_TRAINER
NEW_ID = 972
ENV_KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer",
            "nnUNet_cin_fingerprint_samples")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(cmd, env):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _tree_hashes(folder):
    return {str(p.relative_to(folder)): _sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base(tiny_model, tmp_path_factory):
    """This module's copy of the session's tiny model (nnUNetv2_plan_and_preprocess_cin + nnUNetv2_train of a user
    trainer in its own nnUNet_extTrainer folder, on 3 CT + 3 MR cases of 24^3, a narrow network); a T2 raw dataset of
    2 labelled cases (+ 1 test case)."""
    copy = copy_of_tiny_model(tiny_model, tmp_path_factory.mktemp("add_modality"))
    root, model = copy["root"], copy["folder"]
    new = write_nnunet_dataset(root / "raw", NEW_ID, "AddT2", {"T2": 2}, shape=(24, 24, 24), seed=6,
                               test_cases_per_modality=1)
    return {"root": root, "env": copy["env"], "model": model, "new": new, "base_raw": copy["raw"],
            "untouched": {"model": _tree_hashes(model), "preprocessed": _tree_hashes(root / "preprocessed" / BASE),
                          "new": _tree_hashes(new)}}


@pytest.fixture(scope="module")
def env(base):
    """In-process calls: nnU-Net reads its folders (and nnUNet_extTrainer) from the environment when used."""
    with pytest.MonkeyPatch.context() as mp:
        for k in ENV_KEYS:
            mp.setenv(k, base["env"][k])
        yield base


def add_modality(*argv) -> int:
    from nnunet_cin.cli import main
    return main(["add-modality", *map(str, argv)])


@pytest.fixture(scope="module")
def added(env):
    """The done-when run: the CT+MR model gains T2 from 2 labelled cases (seeded, 1 epoch of 2 iterations)."""
    out = env["root"] / "with_t2"
    assert add_modality("-i", env["model"], "-d", NEW_ID, "-m", "T2", "-o", out, "--epochs", 1,
                        "--iterations-per-epoch", 2, "--val-iterations-per-epoch", 1, "--seed", 0,
                        "-device", "cpu") == 0
    return out


@pytest.fixture(scope="module")
def added_adapters(env):
    """The same, with the capacity of `--adapt adapters`: T2's rows in every norm (decoder too) and its residual
    adapters."""
    out = env["root"] / "with_t2_adapters"
    assert add_modality("-i", env["model"], "-d", NEW_ID, "-m", "T2", "-o", out, "--adapt", "adapters", "--epochs", 1,
                        "--iterations-per-epoch", 2, "--val-iterations-per-epoch", 1, "--seed", 0,
                        "-device", "cpu") == 0
    return out


def predict(model_folder, inputs, output, modality=None, *extra):
    from nnunet_cin.inference.predict import predict_from_modelfolder_entry_point
    predict_from_modelfolder_entry_point(["-i", str(inputs), "-o", str(output), "-m", str(model_folder), "-f", "0",
                                          "-device", "cpu", "--save_probabilities", "--disable_progress_bar",
                                          "-npp", "0", "-nps", "0", *(["--modality", modality] if modality else []),
                                          *extra])


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


# ----------------------------------------------------------------------------------------------- the mechanism
def _tiny_network(rows: int) -> torch.nn.Module:
    from nnunet_cin.cin import ConditionalInstanceNorm3d
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), ConditionalInstanceNorm3d(4, rows), torch.nn.LeakyReLU(),
                              torch.nn.Conv3d(4, 2, 1))
    with torch.no_grad():
        net[1].weight.normal_()
        net[1].bias.normal_()
    return net


def _sgd_steps(net, steps: int = 5):
    """nnU-Net's optimizer (SGD, momentum 0.99, Nesterov, weight decay) over every parameter, on a batch that
    holds every modality (so that the old rows would get gradients if they were trained)."""
    from nnunet_cin.cin import condition
    optimizer = torch.optim.SGD(net.parameters(), 0.1, weight_decay=0.1, momentum=0.99, nesterov=True)
    x = torch.randn(3, 1, 6, 6, 6, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        optimizer.zero_grad()
        with condition(net, torch.tensor([0, 1, 2])):
            net(x).square().mean().backward()
        optimizer.step()


def test_new_rows_alone_train_under_momentum_and_weight_decay():
    from nnunet_cin.add_modality.rows import attach_new_rows, detach_new_rows, unchanged_except_new_rows
    net = _tiny_network(3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    old = {k: (v[:2] if k.startswith("1.") else v) for k, v in before.items()}
    trainable = attach_new_rows(net, old)
    assert [tuple(p.shape) for p in trainable] == [(1, 4), (1, 4)]
    assert [n for n, p in net.named_parameters() if p.requires_grad] == [
        "1.parametrizations.weight.original", "1.parametrizations.bias.original"]
    _sgd_steps(net)
    detach_new_rows(net)
    after = net.state_dict()
    assert list(after) == list(before) and type(net[1]).__name__ == "ConditionalInstanceNorm3d"
    for k in ("0.weight", "0.bias", "3.weight", "3.bias"):
        assert torch.equal(after[k], before[k])
    for k in ("1.weight", "1.bias"):
        assert torch.equal(after[k][:2], before[k][:2]) and not torch.equal(after[k][2], before[k][2])
    assert unchanged_except_new_rows(old, after, ["1.weight", "1.bias"]) == []
    assert unchanged_except_new_rows(old, before | {"3.bias": before["3.bias"] + 1}, ["1.weight", "1.bias"]) == \
        ["3.bias"]


def test_masking_the_old_rows_gradients_would_not_freeze_them():
    """Why the old rows are no parameters during the adaptation: with their gradients zeroed, weight decay still
    moves them (and momentum carries it on)."""
    net = _tiny_network(3)
    before = net[1].weight.detach().clone()
    for p in net.parameters():
        p.requires_grad_(p is net[1].weight or p is net[1].bias)
    mask = torch.tensor([0.0, 0.0, 1.0])[:, None]
    net[1].weight.register_hook(lambda g: g * mask)
    net[1].bias.register_hook(lambda g: g * mask)
    _sgd_steps(net)
    assert not torch.equal(net[1].weight[:2], before[:2])


def test_unlabeled_objective_against_hand_computed_values():
    from nnunet_cin.add_modality.trainer import MirrorEntropyObjective
    objective = MirrorEntropyObjective(consistency_weight=0.5)
    uniform = torch.zeros(2, 4, 3, 3, 3)
    assert torch.allclose(objective(uniform), torch.log(torch.tensor(4.0)))  # entropy of 4 equal classes
    objective.mirror_dims = (2, 4)
    x = torch.randn(1, 4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    consistent = torch.cat([x, torch.flip(x, (2, 4))])  # the second half: the first one's mirror image
    p = torch.softmax(x, 1)
    entropy = -(p * torch.log(p)).sum(1).mean()
    assert torch.allclose(objective([consistent, torch.zeros(2, 4, 2, 2, 2)]), entropy, atol=1e-6)
    big = 30.0
    a, b = torch.zeros(1, 4, 3, 3, 3), torch.zeros(1, 4, 3, 3, 3)
    a[:, 0], b[:, 1] = big, big  # certain of class 0, certain of class 1: entropy 0, squared difference 2 per voxel
    assert torch.allclose(objective(torch.cat([a, b])), torch.tensor(0.5 * 2.0), atol=1e-6)


def test_with_added_modality_appends_and_leaves_the_callers_plans_alone():
    from nnunet_cin.plans import CINPlans, CINPlansError
    entry = CINPlans.entry_for(["CT", "MR"], {"modalities": ["CT", "MR"]}, {"CT": "CTNormalization",
                               "MR": "ZScoreNormalization"}, {"CT": False, "MR": False},
                               {"CT": {"0": {"mean": 1.0}}, "MR": {"0": {"mean": 2.0}}},
                               {"version": 1, "modalities": {"CT": {"n_cases": 3}, "MR": {"n_cases": 3}}})
    plans = {"plans_name": "p", "cin": entry}
    snapshot = json.dumps(plans, sort_keys=True)
    new = CINPlans(plans).with_added_modality("T2", "ZScoreNormalization", True, {"0": {"mean": 3.0}},
                                             {"modalities": ["CT", "MR", "T2"]}, {"n_cases": 2}, "zscore",
                                             {"cases": ["t2_0000"]})
    assert json.dumps(plans, sort_keys=True) == snapshot
    cin = CINPlans(new)
    assert cin.modalities == ["CT", "MR", "T2"] and cin.rules == {"modalities": ["CT", "MR", "T2"]}
    assert cin.normalization("T2", 1) == ("ZScoreNormalization", True, {"0": {"mean": 3.0}})
    assert cin.normalization("CT", 1) == ("CTNormalization", False, {"0": {"mean": 1.0}})
    assert cin.signatures["modalities"]["T2"] == {"n_cases": 2}
    assert new["cin"]["modality_normalization"] == {"T2": "zscore"}
    assert new["cin"]["added_modalities"] == {"T2": {"cases": ["t2_0000"]}}
    with pytest.raises(CINPlansError, match="already serve"):
        cin.with_added_modality("MR", "ZScoreNormalization", False, {}, {})


# ------------------------------------------------------------------------------------------------- the guarantee
def test_checkpoint_grows_by_the_new_cin_rows_only(env, added):
    old = _load(env["model"] / "fold_0" / "checkpoint_final.pth")["network_weights"]
    new = _load(added / "fold_0" / "checkpoint_final.pth")["network_weights"]
    assert set(new) == set(old)
    # the CIN tensors are the network's only 2-d tensors: (modalities, channels)
    cin = {k for k, v in old.items() if v.dim() == 2}
    assert cin and all(old[k].shape[0] == 2 for k in cin)
    for k, v in old.items():
        if k in cin:
            assert new[k].shape == (3, v.shape[1]) and torch.equal(new[k][:2], v), k
        else:
            assert new[k].dtype == v.dtype and torch.equal(new[k], v), k
    # the new rows were trained: they left the MR rows they started from
    assert any(not torch.equal(new[k][2], old[k][1]) for k in cin)


@pytest.fixture(scope="module")
def old_predictions(env, tmp_path_factory):
    """The original model's predictions of the base test cases under each modality (the modality check off: every
    row on every case), once for both extended models."""
    root = tmp_path_factory.mktemp("old_predictions")
    for modality in ("CT", "MR"):
        predict(env["model"], env["base_raw"] / "imagesTs", root / modality, modality, "--skip-modality-check")
    return root


@pytest.mark.parametrize("extended", ["added", "added_adapters"])
def test_old_modalities_predict_bitwise_as_before(env, old_predictions, extended, tmp_path, request):
    """The exported probabilities and segmentations of CT and MR cases (nnU-Net's sliding window with mirroring),
    and the network's logits on the same input, of the original and the extended model folder (--adapt rows, the
    default, and --adapt adapters: other tensors in the decoder's norms and adapters after every norm)."""
    from nnunet_cin.cin import condition
    from nnunet_cin.inference.predict import nnUNetPredictorCIN
    added = request.getfixturevalue(extended)

    # every row on every case: CT and MR cases each predicted as both modalities (the modality check would refuse
    # the mismatched ones)
    for modality in ("CT", "MR"):
        predict(added, env["base_raw"] / "imagesTs", tmp_path / f"new_{modality}", modality, "--skip-modality-check")
        for case in ("ct_0003", "mr_0003"):
            a = np.load(old_predictions / modality / f"{case}.npz")["probabilities"]
            b = np.load(tmp_path / f"new_{modality}" / f"{case}.npz")["probabilities"]
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (modality, case)
            seg_a = sitk.GetArrayFromImage(sitk.ReadImage(str(old_predictions / modality / f"{case}.nii.gz")))
            seg_b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"new_{modality}" / f"{case}.nii.gz")))
            assert np.array_equal(seg_a, seg_b)
    networks = []
    for folder in (env["model"], added):
        p = nnUNetPredictorCIN(device=torch.device("cpu"))
        p.initialize_from_trained_model_folder(str(folder), (0,))
        p.network.load_state_dict(p.list_of_parameters[0])
        networks.append(p.network.eval())
    x = torch.randn(2, 1, 24, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for m in (0, 1, torch.tensor([1, 0])):
            outs = []
            for net in networks:
                with condition(net, m):
                    outs.append(net(x))
            assert torch.equal(outs[0], outs[1])
        with condition(networks[1], 2):  # the new modality computes something else
            assert not torch.equal(networks[1](x), outs[1])


def test_adapters_grow_the_checkpoint_by_the_new_modality_only(env, added_adapters):
    """--adapt adapters: the encoder's CIN tensors one row longer; each decoder norm's shared weight and bias become
    one row per modality, the old rows copies of the shared tensor; one (1, C, C) adapter per norm; nothing else
    changed, and the parameter count recorded is what the new modality holds."""
    from nnunet_cin.networks.adapters import AdaptedInstanceNorm
    from nnunet_cin.inference.predict import nnUNetPredictorCIN
    old = _load(env["model"] / "fold_0" / "checkpoint_final.pth")["network_weights"]
    new = _load(added_adapters / "fold_0" / "checkpoint_final.pth")["network_weights"]
    adapters = {k for k in new if k.endswith(".adapter")}
    assert set(new) - set(old) == adapters and set(old) <= set(new)
    encoder = {k for k, v in old.items() if v.dim() == 2}  # the model's CIN tensors (the decoder holds the encoder)
    decoder = {k for k in old if k.startswith("decoder.stages.") and ".norm." in k}
    assert encoder and decoder and not encoder & decoder
    for k, v in old.items():
        if k in encoder:
            assert new[k].shape == (3, v.shape[1]) and torch.equal(new[k][:2], v), k
        elif v.dim() == 1 and new[k].dim() == 2:  # decoder norms (under .norm and .all_modules)
            assert new[k].shape == (3, v.shape[0]) and torch.equal(new[k][0], v) and torch.equal(new[k][1], v), k
        else:
            assert new[k].dtype == v.dtype and torch.equal(new[k], v), k
    assert all(new[k].dim() == 2 for k in decoder)
    assert any(not torch.equal(new[k][0], new[k][2]) for k in decoder)  # T2's decoder rows trained
    assert all(new[k].shape[0] == 1 for k in adapters) and any(new[k].abs().sum() > 0 for k in adapters)
    p = nnUNetPredictorCIN(device=torch.device("cpu"))
    p.initialize_from_trained_model_folder(str(added_adapters), (0,))
    layers = {id(m): m for m in p.network.modules() if isinstance(m, AdaptedInstanceNorm)}.values()
    assert layers and all(m.adapted == [2] for m in layers)
    rows = sum(2 * m.num_features for m in layers)  # every norm: one weight and one bias row of T2's
    record = json.loads((added_adapters / "fold_0" / "add_modality.json").read_text())
    assert record["adapt"] == "adapters"
    assert record["added_parameters"] == record["trained_parameters"] == rows + sum(m.num_features ** 2
                                                                                     for m in layers)


def test_new_modality_predicts_with_modality_flag_and_by_its_pattern(env, added, tmp_path):
    predict(added, env["new"] / "imagesTs", tmp_path / "t2", "T2")
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "t2" / "t2_0002.nii.gz")))
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(env["new"] / "imagesTs" / "t2_0002_0000.nii.gz")))
    assert seg.shape == image.shape and set(np.unique(seg)) <= set(range(8))
    # no --modality: the dataset's "t2_" pattern travelled into the extended model's rules
    predict(added, env["new"] / "imagesTs", tmp_path / "t2_rules")
    assert np.load(tmp_path / "t2_rules" / "t2_0002.npz")["probabilities"].tobytes() == \
        np.load(tmp_path / "t2" / "t2_0002.npz")["probabilities"].tobytes()
    # the nnU-Net command line, as a user runs it
    _run(["nnUNetv2_predict_cin_from_modelfolder", "-i", str(env["new"] / "imagesTs"), "-o", str(tmp_path / "cli"),
          "-m", str(added), "--modality", "T2", "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps",
          "1", "--disable_progress_bar"], env["env"])
    assert (tmp_path / "cli" / "t2_0002.nii.gz").is_file()


def test_extended_model_folder_and_untouched_inputs(env, added):
    plans = json.loads((added / "plans.json").read_text())
    cin = plans["cin"]
    assert cin["modalities"] == ["CT", "MR", "T2"]
    assert cin["normalization_schemes"] == {"CT": "CTClipZScoreNormalization", "MR": "ZScoreNormalization",
                                            "T2": "ZScoreNormalization"}
    assert set(cin["signatures"]["modalities"]) == {"CT", "MR", "T2"}
    assert cin["signatures"]["modalities"]["T2"]["n_cases"] == 2
    assert cin["rules"]["modality_patterns"] == {"CT": "^ct_", "MR": "^mr_", "T2": "^t2_"}
    assert cin["added_modalities"]["T2"]["cases"] == ["t2_0000", "t2_0001"]
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["num_modalities"] == 3
    old_plans = json.loads((env["model"] / "plans.json").read_text())
    for m in ("CT", "MR"):  # the model's modalities keep every entry
        for key in ("normalization_schemes", "use_mask_for_norm", "intensity_properties"):
            assert cin[key][m] == old_plans["cin"][key][m]
        assert cin["signatures"]["modalities"][m] == old_plans["cin"]["signatures"]["modalities"][m]
    # T2's intensity statistics are its foreground's (labels 1..7) only
    fg = []
    for case in ("t2_0000", "t2_0001"):
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(env["new"] / "imagesTr" / f"{case}_0000.nii.gz")))
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(env["new"] / "labelsTr" / f"{case}.nii.gz")))
        fg.append(img[seg > 0])
    assert abs(cin["intensity_properties"]["T2"]["0"]["median"] - np.median(np.concatenate(fg))) < 15
    dataset_json = json.loads((added / "dataset.json").read_text())
    assert dataset_json["modalities"] == ["CT", "MR", "T2"]
    record = json.loads((added / "fold_0" / "add_modality.json").read_text())
    weights = _load(env["model"] / "fold_0" / "checkpoint_final.pth")["network_weights"]
    # one weight and one bias row per encoder norm (each norm is registered under several names; count .norm once)
    channels = sum(v.shape[1] for k, v in weights.items() if k.startswith("encoder.") and k.endswith(".norm.weight"))
    assert record["init"] == "MR" and record["labelled"] and record["trained_parameters"] == 2 * channels
    assert (added / "fold_0" / "validation" / "summary.json").is_file()  # nnU-Net's sliding-window validation
    assert not (added.parent / (added.name + ".partial")).exists()
    # the model folder, its preprocessed data and splits, and the new raw dataset were only read
    root = env["root"]
    assert _tree_hashes(env["model"]) == env["untouched"]["model"]
    assert _tree_hashes(root / "preprocessed" / BASE) == env["untouched"]["preprocessed"]
    assert _tree_hashes(env["new"]) == env["untouched"]["new"]


# ------------------------------------------------------------------------------------------------ other paths
def test_unlabeled_adaptation_runs_end_to_end(env, tmp_path):
    unlabeled = tmp_path / "Dataset973_T2images"
    (unlabeled / "imagesTr").mkdir(parents=True)
    for f in (env["new"] / "imagesTr").iterdir():
        shutil.copy(f, unlabeled / "imagesTr" / f.name)
    meta = json.loads((env["new"] / "dataset.json").read_text())
    (unlabeled / "dataset.json").write_text(json.dumps(meta))
    out = tmp_path / "with_t2_unlabeled"
    assert add_modality("-i", env["model"], "-d", unlabeled, "-m", "T2", "-o", out, "--unlabeled", "--epochs", 1,
                        "--iterations-per-epoch", 2, "--val-iterations-per-epoch", 1, "--seed", 0,
                        "-device", "cpu") == 0
    old = _load(env["model"] / "fold_0" / "checkpoint_final.pth")["network_weights"]
    new = _load(out / "fold_0" / "checkpoint_final.pth")["network_weights"]
    cin = [k for k, v in old.items() if v.dim() == 2]
    assert all(torch.equal(new[k][:2], old[k]) for k in cin)
    assert all(torch.equal(new[k], v) for k, v in old.items() if k not in cin)
    assert any(not torch.equal(new[k][2], old[k][1]) for k in cin)
    plans = json.loads((out / "plans.json").read_text())
    assert plans["cin"]["intensity_properties"]["T2"]["0"]  # whole-image statistics (z-score does not use them)
    assert plans["cin"]["added_modalities"]["T2"]["statistics_from"] == "whole image"
    predict(out, env["new"] / "imagesTs", tmp_path / "pred", "T2")
    assert (tmp_path / "pred" / "t2_0002.nii.gz").is_file()


@pytest.mark.parametrize("init, expected", [("closest", "MR"), ("mean", "mean"), ("CT", "CT")])
def test_untrained_rows_start_where_init_says(env, tmp_path, init, expected):
    out = tmp_path / "untrained"
    assert add_modality("-i", env["model"], "-d", NEW_ID, "-m", "T2", "-o", out, "--epochs", 0, "--init", init,
                        "-device", "cpu") == 0
    old = _load(env["model"] / "fold_0" / "checkpoint_final.pth")["network_weights"]
    new = _load(out / "fold_0" / "checkpoint_final.pth")["network_weights"]
    for k, v in old.items():
        if v.dim() == 2:
            want = v.mean(0) if expected == "mean" else v[["CT", "MR"].index(expected)]
            assert torch.equal(new[k][2], want), k


def _refused(capsys, out, *argv_and_expected):
    *argv, expected = argv_and_expected
    assert add_modality(*argv, "-o", out, "--epochs", 1, "-device", "cpu") == 2
    err = capsys.readouterr().err
    for e in expected:
        assert e in err, err
    assert not out.exists() and not out.parent.joinpath(out.name + ".partial").exists()
    return err


def test_bad_requests_are_refused_before_anything_is_written(env, tmp_path, capsys):
    m, out = env["model"], tmp_path / "out"
    _refused(capsys, out, "-i", m, "-d", NEW_ID, "-m", "MR", ["already has modality \"MR\"", "-m"])
    # a dataset without cases
    empty = tmp_path / "empty"
    (empty / "imagesTr").mkdir(parents=True)
    shutil.copy(env["new"] / "dataset.json", empty / "dataset.json")
    _refused(capsys, out, "-i", m, "-d", empty, "-m", "T2", ["holds no case", "imagesTr"])
    # labels that are not the model's
    relabelled = tmp_path / "relabelled"
    shutil.copytree(env["new"], relabelled)
    meta = json.loads((relabelled / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "heart": 1}
    (relabelled / "dataset.json").write_text(json.dumps(meta))
    _refused(capsys, out, "-i", m, "-d", relabelled, "-m", "T2", ['"labels"', "heart", "MYO"])
    # a label value the model does not know, in one file
    bad_value = tmp_path / "bad_value"
    shutil.copytree(env["new"], bad_value)
    label_file = bad_value / "labelsTr" / "t2_0001.nii.gz"
    label = sitk.ReadImage(str(label_file))
    arr = sitk.GetArrayFromImage(label)
    arr[0, 0, 0] = 9
    fixed = sitk.GetImageFromArray(arr)
    fixed.CopyInformation(label)
    sitk.WriteImage(fixed, str(label_file))
    _refused(capsys, out, "-i", m, "-d", bad_value, "-m", "T2", ["t2_0001.nii.gz", "[9]"])
    # a missing label file
    missing = tmp_path / "missing"
    shutil.copytree(env["new"], missing)
    (missing / "labelsTr" / "t2_0000.nii.gz").unlink()
    _refused(capsys, out, "-i", m, "-d", missing, "-m", "T2", ["t2_0000", "--unlabeled"])
    # --unlabeled with a normalization that needs foreground statistics
    ct_norm = tmp_path / "ct_norm"
    shutil.copytree(env["new"], ct_norm)
    meta = json.loads((ct_norm / "dataset.json").read_text())
    meta["modality_normalization"] = {"T2": "CT"}
    (ct_norm / "dataset.json").write_text(json.dumps(meta))
    _refused(capsys, out, "-i", m, "-d", ct_norm, "-m", "T2", "--unlabeled", ["CTNormalization", "zscore"])
    # a dataset.json that names another modality
    _refused(capsys, out, "-i", m, "-d", NEW_ID, "-m", "FLAIR", ['"FLAIR"', "T2"])
    # a pattern that would take the model's own cases
    greedy = tmp_path / "greedy"
    shutil.copytree(env["new"], greedy)
    meta = json.loads((greedy / "dataset.json").read_text())
    meta["modality_patterns"] = {"T2": "_000"}
    (greedy / "dataset.json").write_text(json.dumps(meta))
    _refused(capsys, out, "-i", m, "-d", greedy, "-m", "T2", ["ct_0000", "exclusive"])
    # an output folder that exists
    out.mkdir()
    assert add_modality("-i", m, "-d", NEW_ID, "-m", "T2", "-o", out, "-device", "cpu") == 2
    assert "exists" in capsys.readouterr().err and not any(out.iterdir())
