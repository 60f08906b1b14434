"""`nnunet-cin convert-pretrained` for every kind of trainer of ours as the target: the conversion matrix, checked on
the values and on what the converted networks compute (the command's main in this process; the refusal through the
console script in a subprocess).

The datasets need no images: the command reads only nnUNet_preprocessed/<dataset>/<plans>.json and dataset.json,
written here by hand (a tiny conv U-Net, as nnU-Net's planner writes it, and plans["cin"] as ours do). The source
checkpoints hold what nnU-Net's save_checkpoint writes for a trainer: the weights of the network the trainer trains
(its plans_for_training + build_network_architecture, as in nnUNetv2_train), randomised so that every affine value
and every CIN row differs, and init_args with the trainer's plans. Tiny transformer trainers are users' subclasses in
their own folder on nnUNet_extTrainer.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm

import nnunet_cin.trainers
from nnunet_cin import condition
from nnunet_cin.cin import cin_layers
from nnunet_cin.plans import CINPlans
from nnunet_helpers import main_in_process

BIN = Path(sys.executable).parent
PLANS = "nnUNetPlansCIN"
CT_MR, MR_CT_T2 = "Dataset981_ConvertCTMR", "Dataset982_ConvertMRCTT2"
LABELS = {"background": 0, "a": 1, "b": 2}

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_TRAINERS = '''
from nnunet_cin.training.transformer_trainers import (nnUNetTrainerCSwinUNETR, nnUNetTrainerCViT,
                                                      nnUNetTrainerSwinUNETRJoint, nnUNetTrainerViTJoint)


class TinyViT:
    token_patch_size, hidden_size, depth, num_heads, feature_size = 8, 16, 3, 2, 4


class TinySwin:
    feature_size, depths, num_heads, window_size = 4, (1, 1), (1, 2), 2


class nnUNetTrainerCViTTiny(TinyViT, nnUNetTrainerCViT):
    pass


class nnUNetTrainerViTJointTiny(TinyViT, nnUNetTrainerViTJoint):
    pass


class nnUNetTrainerCSwinTiny(TinySwin, nnUNetTrainerCSwinUNETR):
    pass


class nnUNetTrainerSwinJointTiny(TinySwin, nnUNetTrainerSwinUNETRJoint):
    pass
'''


def conv_unet_plans(dataset: str, modalities) -> dict:
    """Plans as nnUNetv2_plan_and_preprocess_cin writes them, with a tiny 3D conv U-Net."""
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16],
                            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 3,
                            "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [1, 1, 1],
                            "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    stats = {"0": {"mean": 0.0, "std": 1.0, "percentile_00_5": -1.0, "percentile_99_5": 1.0}}
    cin = CINPlans.entry_for(modalities, {"modalities": list(modalities)},
                             {m: "ZScoreNormalization" for m in modalities}, {m: False for m in modalities},
                             {m: stats for m in modalities})
    return {"dataset_name": dataset, "plans_name": PLANS, "label_manager": "LabelManager",
            "configurations": {"3d_fullres": {
                "data_identifier": f"{PLANS}_3d_fullres", "preprocessor_name": "CINPreprocessor", "batch_size": 2,
                "patch_size": [16, 16, 16], "spacing": [1.0, 1.0, 1.0],
                "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False], "architecture": arch}},
            "cin": cin}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Both datasets' plans and dataset.json, the tiny trainers' folder; the environment of the command (and of this
    process while the module runs: the tests look the trainers up as nnU-Net does)."""
    root = tmp_path_factory.mktemp("convert")
    for dataset, modalities in ((CT_MR, ["CT", "MR"]), (MR_CT_T2, ["MR", "CT", "T2"])):
        folder = root / "preprocessed" / dataset
        folder.mkdir(parents=True)
        (folder / f"{PLANS}.json").write_text(json.dumps(conv_unet_plans(dataset, modalities)))
        (folder / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "image"}, "labels": LABELS, "numTraining": 0, "file_ending": ".nii.gz",
            "modalities": modalities, "modality_patterns": {m: f"^{m.lower()}_" for m in modalities}}))
    (root / "my_trainers").mkdir()
    (root / "my_trainers" / "tiny_transformer_trainers.py").write_text(TINY_TRAINERS)
    env = dict(os.environ, nnUNet_preprocessed=str(root / "preprocessed"), nnUNet_raw=str(root / "raw"),
               nnUNet_results=str(root / "results"), nnUNet_compile="false",
               nnUNet_extTrainer=os.pathsep.join([str(root / "my_trainers"), nnunet_cin.trainers.__path__[0]]))
    before = os.environ.get("nnUNet_extTrainer")
    os.environ["nnUNet_extTrainer"] = env["nnUNet_extTrainer"]
    yield env, root
    if before is None:
        del os.environ["nnUNet_extTrainer"]
    else:
        os.environ["nnUNet_extTrainer"] = before


def trainer_class(name: str, env):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    return recursive_find_trainer_class_by_name(name)


def trained_network(name: str, dataset: str, env, seed: int = 0):
    """The network trainer `name` trains on `dataset` (as nnUNetv2_train builds it), with random affine values in
    every normalization layer (each CIN row its own), and the checkpoint nnU-Net would save for it."""
    root = env[1]
    cls = trainer_class(name, env)
    folder = root / "preprocessed" / dataset
    plans = json.loads((folder / f"{PLANS}.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    plans = cls.plans_for_training(plans, "3d_fullres", dataset_json)
    pm = PlansManager(plans)
    torch.manual_seed(seed)
    net = cls.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, len(LABELS), False).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.LayerNorm, _InstanceNorm)) or m in cin_layers(net):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
    checkpoint = {"network_weights": net.state_dict(), "trainer_name": name,
                  "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset_json}}
    return net, checkpoint


def convert(env, source: dict, target_trainer: str, dataset: str, tmp_path, name: str, command: bool = False):
    """`nnunet-cin convert-pretrained` of `source`: the console script in a subprocess (command=True), else its main
    in this process with the command's environment (the same code without ~10 s of imports)."""
    src, dst = tmp_path / f"{name}_source.pth", tmp_path / f"{name}_converted.pth"
    torch.save(source, src)
    argv = ["convert-pretrained", str(src), str(dst), "-d", dataset, "-p", PLANS, "-tr", target_trainer]
    if command:
        return subprocess.run([str(BIN / "nnunet-cin"), *argv], env=env[0], capture_output=True, text=True,
                              timeout=600), dst
    from nnunet_cin.cli import main
    return main_in_process(main, argv, {k: v for k, v in env[0].items() if k.startswith("nnUNet_")}), dst


def converted_network(env, target_trainer: str, dataset: str, converted: Path):
    """The target trainer's network with the converted weights. nnU-Net's -pretrained_weights loader must accept the
    file (it skips the segmentation heads); the heads are then loaded too, so that whole outputs can be compared."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    net, _ = trained_network(target_trainer, dataset, env, seed=99)
    load_pretrained_weights(net, str(converted), verbose=False)
    net.load_state_dict(torch.load(converted, weights_only=False)["network_weights"])
    return net.eval()


def outputs(net, x, modality=None):
    with torch.no_grad():
        if modality is None:
            return net(x)
        with condition(net, modality):
            return net(x)


def norm_keys(net, types) -> set:
    return {f"{n}.{p}" for n, m in net.named_modules(remove_duplicate=False) if isinstance(m, types)
            for p in ("weight", "bias")}


@pytest.mark.parametrize("source_trainer,target_trainer", [
    ("nnUNetTrainerJoint", "nnUNetTrainerCIN"),  # conv U-Net: instance norm -> CIN
    ("nnUNetTrainerViTJointTiny", "nnUNetTrainerCViTTiny"),  # UNETR: LayerNorm -> CIN over the tokens
    ("nnUNetTrainerSwinJointTiny", "nnUNetTrainerCSwinTiny"),  # Swin-UNETR: LayerNorm -> CIN over the tokens
])
def test_plain_to_conditional(env, tmp_path, source_trainer, target_trainer):
    plain, checkpoint = trained_network(source_trainer, CT_MR, env)
    result, converted = convert(env, checkpoint, target_trainer, CT_MR, tmp_path, "plain")
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(converted, weights_only=False)["modalities"] == ["CT", "MR"]
    net = converted_network(env, target_trainer, CT_MR, converted)
    state, source = net.state_dict(), plain.state_dict()
    cin_keys = {f"{n}.{p}" for n, m in net.named_modules(remove_duplicate=False)
                if m in cin_layers(net) for p in ("weight", "bias")}
    assert cin_keys and set(state) == set(source)
    for key, value in source.items():
        if ".seg_layers." in key:
            continue
        if key in cin_keys:  # every modality row holds the plain affine
            assert state[key].shape == (2, *value.shape)
            for m in range(2):
                torch.testing.assert_close(state[key][m], value, rtol=0, atol=0)
        else:
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)

    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    per_modality = [outputs(net, x, m) for m in range(2)]
    torch.testing.assert_close(per_modality[0], per_modality[1], rtol=0, atol=0)  # one function for every modality
    if source_trainer == "nnUNetTrainerJoint":
        # instance norm -> CIN with the same affine: exactly the plain network, for every modality
        for y in per_modality:
            torch.testing.assert_close(y, outputs(plain, x), rtol=1e-5, atol=1e-5)
    else:
        # the conv blocks compute what they computed; the transformer norms normalize along another axis
        # (LayerNorm: each token over its channels, CIN: each channel over the tokens), so the whole network does not
        for m in range(2):
            with torch.no_grad(), condition(net, m):
                torch.testing.assert_close(net.encoder.stem(x), plain.encoder.stem(x), rtol=1e-5, atol=1e-5)
        layer_norms = norm_keys(plain, nn.LayerNorm)
        assert layer_norms and layer_norms <= cin_keys


@pytest.mark.parametrize("source_trainer,target_trainer", [
    ("nnUNetTrainerCIN", "nnUNetTrainerJoint"),
    ("nnUNetTrainerCViTTiny", "nnUNetTrainerViTJointTiny"),
])
def test_conditional_to_plain_takes_the_mean_row(env, tmp_path, source_trainer, target_trainer):
    conditional, checkpoint = trained_network(source_trainer, CT_MR, env)
    result, converted = convert(env, checkpoint, target_trainer, CT_MR, tmp_path, "cin")
    assert result.returncode == 0, result.stderr[-3000:]
    net = converted_network(env, target_trainer, CT_MR, converted)
    assert not cin_layers(net)
    state, source = net.state_dict(), conditional.state_dict()
    rows = {k for k, v in source.items() if v.dim() == 2 and state[k].dim() == 1}
    assert rows
    for key, value in source.items():
        if ".seg_layers." in key:
            continue
        expected = (value[0] + value[1]) / 2 if key in rows else value
        assert key not in rows or not torch.equal(value[0], value[1])  # the rows differ: the mean is a mean
        torch.testing.assert_close(state[key], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("trainer", ["nnUNetTrainerCIN", "nnUNetTrainerCViTTiny"])
def test_between_modality_sets_rows_follow_the_names(env, tmp_path, trainer):
    """[CT, MR] -> [MR, CT, T2]: the rows reordered by name, T2 (new) gets the mean row; the converted network
    computes for MR and CT exactly what the source computed for them."""
    source, checkpoint = trained_network(trainer, CT_MR, env)
    result, converted = convert(env, checkpoint, trainer, MR_CT_T2, tmp_path, "sets")
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(converted, weights_only=False)["modalities"] == ["MR", "CT", "T2"]
    net = converted_network(env, trainer, MR_CT_T2, converted)
    state, weights = net.state_dict(), source.state_dict()
    cin_keys = {f"{n}.{p}" for n, m in net.named_modules(remove_duplicate=False)
                if m in cin_layers(net) for p in ("weight", "bias")}
    assert cin_keys and all(state[k].shape[0] == 3 and weights[k].shape[0] == 2 for k in cin_keys)
    for key in cin_keys:
        ct, mr = weights[key][0], weights[key][1]
        assert not torch.equal(ct, mr)
        torch.testing.assert_close(state[key], torch.stack([mr, ct, (ct + mr) / 2]), rtol=1e-6, atol=1e-7)

    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    for name in ("CT", "MR"):
        torch.testing.assert_close(outputs(net, x, ["MR", "CT", "T2"].index(name)),
                                   outputs(source, x, ["CT", "MR"].index(name)), rtol=1e-5, atol=1e-5)


def test_conv_unet_into_a_transformer_is_refused_in_one_line(env, tmp_path):
    _, checkpoint = trained_network("nnUNetTrainerJoint", CT_MR, env)
    result, converted = convert(env, checkpoint, "nnUNetTrainerCViTTiny", CT_MR, tmp_path, "refused", command=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("nnunet-cin convert-pretrained: error:")]
    assert len(lines) == 1, result.stderr  # (torch may add its own warnings around it)
    assert "PlainConvUNet" in lines[0] and "ConditionalUNETR" in lines[0] and "convert only between" in lines[0]
    assert not converted.exists()
