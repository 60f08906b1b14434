"""nnUNetTrainerCIN and its baselines through nnU-Net's real entry points (`nnUNetv2_plan_and_preprocess`,
`nnUNetv2_train`, nnU-Net's trainer lookup and pretrained-weights loader), on tiny generated CT + MR data.

The data is planned once per module with plain nnU-Net plans (the trainer converts the architecture), plus a copy of
the plans with a narrower U-Net ("nnUNetPlansTiny", same preprocessed data) to keep CPU runs short. The short-run
trainers are users' subclasses in their own folder on nnUNet_extTrainer, next to ours, as the README tells users to
do.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.logging.nnunet_logger import LocalLogger

import nnunet_cin.trainers
from nnunet_cin.cin import cin_layers
from nnunet_cin.plans import checkpoint_modalities
from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset

DATASET_ID, DATASET = 999, "Dataset999_SyntheticHeart"
PLANS = "nnUNetPlansTiny"
OURS = nnunet_cin.trainers.__path__[0]
# what nnU-Net 2.8.1's nnUNetTrainer.save_checkpoint writes
NNUNET_CHECKPOINT_KEYS = {"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
                          "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes"}
BIN = Path(sys.executable).parent

USER_TRAINERS = '''
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN  # ours: imported absolutely


class nnUNetTrainerCINTest(nnUNetTrainerCIN):
    """A user's variant: a few iterations per epoch."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("CIN_TEST_EPOCHS", "1"))
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1

    def perform_actual_validation(self, save_probabilities: bool = False):
        if os.environ.get("CIN_TEST_SKIP_VAL") != "1":
            super().perform_actual_validation(save_probabilities)
'''


def modality_of(case: str) -> int:
    """The expected conditioning index, from the case id alone (dataset.json: ["CT", "MR"], "^ct_", "^mr_")."""
    return {"ct_": 0, "mr_": 1}[case[:3]]


def run(command, env, extra=None):
    result = subprocess.run([str(c) for c in command], env={**env, **(extra or {})}, capture_output=True, text=True,
                            timeout=900)
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{out[-6000:]}"
    return out


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    paths = {n: root / n for n in ("raw", "preprocessed", "results", "user_trainers")}
    for p in paths.values():
        p.mkdir()
    (paths["user_trainers"] / "nnUNetTrainerCINTest.py").write_text(USER_TRAINERS)
    env = {**os.environ, "nnUNet_raw": str(paths["raw"]), "nnUNet_preprocessed": str(paths["preprocessed"]),
           "nnUNet_results": str(paths["results"]), "nnUNet_compile": "false", "nnUNet_def_n_proc": "1",
           "nnUNet_n_proc_DA": "0", "OMP_WAIT_POLICY": "PASSIVE",  # nnU-Net -device cpu runs 2 threads: no spinning
           "nnUNet_extTrainer": os.pathsep.join([str(paths["user_trainers"]), OURS])}
    write_nnunet_dataset(paths["raw"], DATASET_ID, cases_per_modality={"CT": 4, "MR": 4}, shape=(24, 24, 24))
    # planning needs nnUNet_n_proc_DA >= 1 (nnU-Net sets torch's thread count from it)
    run([BIN / "nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "3d_fullres", "-np", "1", "-npfp", "1"],
        env, {"nnUNet_n_proc_DA": "1"})
    folder = paths["preprocessed"] / DATASET
    plans = load_json(folder / "nnUNetPlans.json")
    plans["plans_name"] = PLANS  # same data_identifier: same preprocessed data
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 8, 16]
    (folder / f"{PLANS}.json").write_text(json.dumps(plans, indent=2))
    return paths, env


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def local(planned, nnunet_env):
    """In-process nnU-Net: conftest's fresh folders, with the module's preprocessed dataset linked in."""
    paths, _ = planned
    (nnunet_env.preprocessed / DATASET).symlink_to(paths["preprocessed"] / DATASET)
    return nnunet_env


def make_trainer(trainer_name="nnUNetTrainerCIN", configuration="3d_fullres", fold=0, plans=PLANS):
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(DATASET_ID), configuration, fold, trainer_name, plans,
                                    device=torch.device("cpu"))
    trainer.initialize()
    return trainer


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def trained(planned):
    """nnUNetv2_train for 1 epoch (final validation skipped), then `--c` to epoch 2 with the final validation."""
    paths, env = planned
    train = [BIN / "nnUNetv2_train", DATASET_ID, "3d_fullres", 0, "-tr", "nnUNetTrainerCINTest", "-p", PLANS,
             "-device", "cpu"]
    first = run(train, env, {"CIN_TEST_EPOCHS": "1", "CIN_TEST_SKIP_VAL": "1"})
    fold = paths["results"] / DATASET / f"nnUNetTrainerCINTest__{PLANS}__3d_fullres" / "fold_0"
    after_first = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    resumed = run(train + ["--c"], env, {"CIN_TEST_EPOCHS": "2"})
    return fold, first, after_first, resumed


def test_train_end_to_end(trained, planned):
    fold, first, after_first, resumed = trained
    assert "these are plain nnU-Net plans" in first  # the warning for plain plans
    # nnU-Net's own checkpoint (no copied save_checkpoint): the modalities travel in the plans of init_args
    assert set(after_first) == NNUNET_CHECKPOINT_KEYS
    assert after_first["init_args"]["plans"]["cin"]["modalities"] == ["CT", "MR"] and after_first["current_epoch"] == 1
    assert checkpoint_modalities(after_first) == ["CT", "MR"]
    assert after_first["trainer_name"] == "nnUNetTrainerCINTest"

    # --c continued from epoch 1 (no new epoch 0) and finished epoch 2 with the same modalities
    assert "Epoch 1" in resumed and "Epoch 0" not in resumed
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint_modalities(final) == ["CT", "MR"] and final["current_epoch"] == 2
    for m in ("CT", "MR"):
        assert len(final["logging"][f"mean_fg_dice/{m}"]) == 2  # the per-modality pseudo-Dice, one per epoch
    assert final["logging"]["mean_fg_dice/CT"][0] == after_first["logging"]["mean_fg_dice/CT"][0] or \
        np.isnan(after_first["logging"]["mean_fg_dice/CT"][0])
    # the CIN layers were trained per modality: the rows differ after two epochs of mixed batches
    cin_weights = [v for k, v in final["network_weights"].items() if k.endswith(".norm.weight") and v.dim() == 2]
    assert cin_weights and all(w.shape[0] == 2 for w in cin_weights)
    assert any(not torch.equal(w[0], w[1]) for w in cin_weights)

    # progress.png is nnU-Net's own, drawn by nnU-Net from the same log; the per-modality curves in a figure of ours
    reference = fold.parent / "reference_progress"
    reference.mkdir(exist_ok=True)
    nnunet_logger = LocalLogger()
    nnunet_logger.load_checkpoint(final["logging"])
    nnunet_logger.plot_progress_png(str(reference))
    np.testing.assert_array_equal(plt.imread(fold / "progress.png"), plt.imread(reference / "progress.png"))
    assert plt.imread(fold / "progress_per_modality.png").shape[:2] == (1800, 3000)
    summary = load_json(fold / "validation" / "summary.json")
    assert set(summary["foreground_mean_per_modality"]) == {"CT", "MR"}
    paths, _ = planned
    splits = load_json(paths["preprocessed"] / DATASET / "splits_final.json")
    for m, name in ((0, "CT"), (1, "MR")):  # mean over the modality's cases per label, then over labels
        per_case = [c["metrics"] for c in summary["metric_per_case"]
                    if modality_of(Path(c["prediction_file"]).name) == m]
        assert per_case
        labels = per_case[0].keys()
        expected = np.nanmean([np.nanmean([c[k]["Dice"] for c in per_case]) for k in labels])
        assert summary["foreground_mean_per_modality"][name]["Dice"] == pytest.approx(expected, nan_ok=True)
    assert "Validation Dice per modality" in resumed

    # nnU-Net created the folds (our trainer stratifies them): every fold validates on both modalities
    assert len(splits) == 5
    for m in (0, 1):
        folds_with_m = [i for i, s in enumerate(splits) if any(modality_of(c) == m for c in s["val"])]
        assert len(folds_with_m) == 4  # 4 cases of each modality land in 4 distinct folds


def test_val_only(trained, planned):
    fold = trained[0]
    _, env = planned
    (fold / "validation" / "summary.json").unlink()
    out = run([BIN / "nnUNetv2_train", DATASET_ID, "3d_fullres", 0, "-tr", "nnUNetTrainerCINTest", "-p", PLANS,
               "-device", "cpu", "--val"], env)
    assert "Validation Dice per modality" in out
    summary = load_json(fold / "validation" / "summary.json")
    assert set(summary["per_modality"]["modalities"]) == {"CT", "MR"}


def test_nnunets_own_predict_command(trained, planned, tmp_path):
    """nnU-Net's own nnUNetv2_predict cannot give a conditional model each case's modality: it stops, before writing
    anything, with a message that names nnUNetv2_predict_cin (it used to fail with "'NoneType' object is not
    callable" or inside a CIN layer). A plain model (the Joint baseline on nnU-Net's plans) it still serves."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_cin.training.baselines import nnUNetTrainerJoint

    paths, env = planned
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    image = sorted((paths["raw"] / DATASET / "imagesTr").iterdir())[0]
    (inputs / image.name).symlink_to(image)
    command = [BIN / "nnUNetv2_predict", "-i", inputs, "-d", DATASET_ID, "-c", "3d_fullres", "-f", 0, "-p", PLANS,
               "-device", "cpu", "--disable_tta", "-npp", 0, "-nps", 0]
    result = subprocess.run([str(c) for c in command + ["-o", tmp_path / "cin", "-tr", "nnUNetTrainerCINTest"]],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode != 0
    assert "nnUNetv2_predict_cin" in result.stderr.splitlines()[-1] and "NoneType" not in result.stderr
    assert not any((tmp_path / "cin").iterdir())  # (nnU-Net creates the output folder first)

    # the Joint baseline's model folder, as nnUNetv2_train writes it (its plans, nnU-Net's checkpoint layout)
    fold = trained[0]
    plans = load_json(fold.parent / "plans.json")
    folder = paths["results"] / DATASET / f"nnUNetTrainerJoint__{PLANS}__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "dataset.json").write_text((fold.parent / "dataset.json").read_text())
    joint_plans = nnUNetTrainerJoint.plans_for_training(load_json(paths["preprocessed"] / DATASET / f"{PLANS}.json"),
                                                        "3d_fullres", load_json(fold.parent / "dataset.json"))
    (folder / "plans.json").write_text(json.dumps(joint_plans))
    pm = PlansManager(joint_plans)
    net = nnUNetTrainerJoint.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 8, False)
    source = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    torch.save({**source, "trainer_name": "nnUNetTrainerJoint", "network_weights": net.state_dict(),
                "init_args": {**source["init_args"], "plans": joint_plans}}, folder / "fold_0" / "checkpoint_final.pth")
    assert plans["configurations"]["3d_fullres"]["preprocessor_name"] == "DefaultPreprocessor"  # nnU-Net's plans
    run(command + ["-o", tmp_path / "joint", "-tr", "nnUNetTrainerJoint"], env)
    assert (tmp_path / "joint" / (image.name[:-len("_0000.nii.gz")] + ".nii.gz")).is_file()


def test_pretrained_plain_to_conditional(planned, local):
    """A plain nnU-Net checkpoint does not fit the conditional network as it is (nnU-Net's own loader refuses it);
    convert_checkpoint makes it fit, and nnUNetv2_train -pretrained_weights then trains from it."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from nnunet_cin.training.checkpoints import convert_checkpoint

    paths, env = planned
    plain = make_trainer("nnUNetTrainer")
    with torch.no_grad():
        for p in plain.network.parameters():
            p.add_(torch.randn_like(p))  # distinct affine values per channel
    plain.save_checkpoint(str(local.results / "plain.pth"))
    plain_weights = torch.load(local.results / "plain.pth", weights_only=False)["network_weights"]

    target = make_trainer("nnUNetTrainerCIN", fold=1)
    with pytest.raises(AssertionError):
        load_pretrained_weights(target.network, str(local.results / "plain.pth"))

    converted = local.results / "plain_as_cin.pth"
    convert_checkpoint(str(local.results / "plain.pth"), str(converted), DATASET_ID, "3d_fullres", PLANS,
                       "nnUNetTrainerCIN")
    saved = torch.load(converted, weights_only=False)
    assert saved["modalities"] == ["CT", "MR"]
    load_pretrained_weights(target.network, str(converted))  # nnU-Net's own loader
    state = target.network.state_dict()
    n_cin = 0
    for key, value in plain_weights.items():
        if ".seg_layers." in key:
            continue
        if state[key].dim() == value.dim() + 1:  # a CIN row per modality, each the plain affine
            n_cin += 1
            for m in range(2):
                torch.testing.assert_close(state[key][m], value)
        else:
            torch.testing.assert_close(state[key], value)
    assert n_cin > 0

    out = run([BIN / "nnUNetv2_train", DATASET_ID, "3d_fullres", 1, "-tr", "nnUNetTrainerCINTest", "-p", PLANS,
               "-device", "cpu", "-pretrained_weights", converted], env, {"CIN_TEST_SKIP_VAL": "1"})
    assert "Loading pretrained weights" in out
    assert (paths["results"] / DATASET / f"nnUNetTrainerCINTest__{PLANS}__3d_fullres" / "fold_1" /
            "checkpoint_final.pth").is_file()


def test_conditional_checkpoint_loads_directly(trained, local):
    """A conditional trainer's checkpoint is a valid -pretrained_weights file for another conditional run (nnU-Net's
    loader, no conversion); for a plain baseline it converts (CIN rows averaged)."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from nnunet_cin.training.checkpoints import add_arguments, convert_checkpoint
    from nnunet_cin.training.checkpoints import run as run_convert

    checkpoint = trained[0] / "checkpoint_final.pth"
    source = torch.load(checkpoint, weights_only=False)["network_weights"]
    target = make_trainer("nnUNetTrainerCIN_5epochs", fold=2)
    load_pretrained_weights(target.network, str(checkpoint))
    for key, value in target.network.state_dict().items():
        if ".seg_layers." not in key:
            torch.testing.assert_close(value, source[key])

    joint_file = local.results / "cin_as_joint.pth"
    parser = argparse.ArgumentParser()
    add_arguments(parser)  # `nnunet-cin convert-pretrained`
    assert run_convert(parser.parse_args([str(checkpoint), str(joint_file), "-d", str(DATASET_ID), "-p", PLANS,
                                          "-tr", "nnUNetTrainerJoint"])) == 0
    joint = make_trainer("nnUNetTrainerJoint", fold=2)
    load_pretrained_weights(joint.network, str(joint_file))
    key = next(k for k, v in source.items() if v.dim() == 2 and k.endswith("norm.weight"))
    torch.testing.assert_close(joint.network.state_dict()[key], source[key].mean(0))
    with pytest.raises(FileNotFoundError, match="plans"):
        convert_checkpoint(str(checkpoint), str(joint_file), DATASET_ID, "3d_fullres", "nnUNetPlansMissing")


# --------------------------------------------------------------------------------------- modality reaches CIN
class ContextSpy:
    """Records, for every call of every CIN layer, the per-sample modality the layer was conditioned on."""

    def __init__(self, network):
        self.calls = []
        self.handles = [layer.register_forward_pre_hook(self._hook) for layer in cin_layers(network)]
        assert self.handles, "the network has no CIN layer"

    def _hook(self, layer, args):
        x = args[0]
        m = layer.context_modality
        m = torch.full((x.shape[0],), m) if isinstance(m, int) else m.expand(x.shape[0])
        self.calls.append(m.tolist())

    def remove(self):
        for h in self.handles:
            h.remove()


def check_conditioning(trainer, batches, step="train_step"):
    """Run `step` on the batches; every CIN call must see the batch's (or sub-batch's) case modalities."""
    seen = set()
    for batch in batches:
        spy = ContextSpy(trainer.network)
        try:
            getattr(trainer, step)(batch)
        finally:
            spy.remove()
        expected = [modality_of(k) for k in batch["keys"]]
        seen.update(expected)
        if step == "train_step":
            mismatched = [c for c in spy.calls if c != expected]
        else:  # validation: one forward per modality present, each on that modality's samples
            mismatched = [c for c in spy.calls if len(set(c)) != 1 or c[0] not in expected
                          or len(c) != expected.count(c[0])]
        if mismatched:
            return False, seen
    return True, seen


def mixed_batches(trainer, n=6):
    """Batches from the trainer's own training loader, made to hold both modalities where the sampler did not."""
    np.random.seed(0)
    batches = [next(trainer.dataloader_train) for _ in range(n)]
    if not any(len({modality_of(k) for k in b["keys"]}) == 2 for b in batches):
        pytest.fail("the mixed sampler gave no mixed batch in 6 draws (p < 0.02 with equal shares)")
    return batches


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_network_gets_each_samples_modality(local, configuration):
    trainer = make_trainer("nnUNetTrainerCIN", configuration)
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    batches = mixed_batches(trainer)
    ok, seen = check_conditioning(trainer, batches, "train_step")
    assert ok and seen == {0, 1}
    trainer.network.eval()
    with torch.no_grad():
        ok, _ = check_conditioning(trainer, batches, "validation_step")
    assert ok

    # the check catches a wrong-modality bug: a trainer that conditions the batch on its first sample's modality
    class FirstSampleOnly(type(trainer)):
        def conditioned_on(self, keys):
            return super().conditioned_on([keys[0]] * len(keys))

    trainer.__class__ = FirstSampleOnly
    ok, _ = check_conditioning(trainer, [b for b in batches if len({modality_of(k) for k in b["keys"]}) == 2])
    assert not ok


def test_final_validation_conditions_each_case(local):
    """nnU-Net's perform_actual_validation loads each case through self.dataset_class and then predicts it: while it
    does, the network is conditioned on that case's modality."""
    trainer = make_trainer("nnUNetTrainerCIN")
    keys = sorted(trainer.dataset_class.get_identifiers(trainer.preprocessed_dataset_folder))
    with trainer._conditioned_case_loading():
        dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, keys)
        for k in keys:
            data = torch.from_numpy(dataset.load_case(k)[0][:][None, :, :24, :24, :24].copy())
            data = torch.nn.functional.pad(data, [0, 24 - data.shape[-1], 0, 24 - data.shape[-2],
                                                  0, 24 - data.shape[-3]])
            spy = ContextSpy(trainer.network)
            with torch.no_grad():
                trainer.network(data)
            spy.remove()
            assert spy.calls and all(c == [modality_of(k)] for c in spy.calls), k
    assert all(layer.context_modality is None for layer in cin_layers(trainer.network))


# ------------------------------------------------------------------------------------------------- baselines
def test_baselines(local):
    joint = make_trainer("nnUNetTrainerJoint")
    assert not cin_layers(joint.network)
    joint.dataloader_train, joint.dataloader_val = joint.get_dataloaders()
    assert np.isfinite(joint.train_step(next(joint.dataloader_train))["loss"])

    alternate = make_trainer("nnUNetTrainerJointAlternate")
    assert not cin_layers(alternate.network)
    alternate.dataloader_train, alternate.dataloader_val = alternate.get_dataloaders()
    # get_dataloaders drew one warm-up batch (batch 0, CT): the stream goes on with MR, CT, ...
    modalities = [{modality_of(k) for k in next(alternate.dataloader_train)["keys"]} for _ in range(4)]
    assert modalities == [{1}, {0}, {1}, {0}]

    single = make_trainer("nnUNetTrainerSingleModality_MR")
    assert not cin_layers(single.network) and single.modalities == ["MR"]
    tr_keys, val_keys = single.do_split()
    assert tr_keys and val_keys and all(modality_of(k) == 1 for k in tr_keys + val_keys)
    single.dataloader_train, single.dataloader_val = single.get_dataloaders()
    assert all(modality_of(k) == 1 for _ in range(3) for k in next(single.dataloader_train)["keys"])
    single.save_checkpoint(str(local.results / "single.pth"))
    assert checkpoint_modalities(torch.load(local.results / "single.pth", weights_only=False)) == ["MR"]
    with pytest.raises(ValueError, match="was trained for modalities"):  # an MR-only model is not a CT+MR model
        joint.load_checkpoint(str(local.results / "single.pth"))

    with pytest.raises(ValueError, match="XR"):
        make_trainer("nnUNetTrainerSingleModality_XR")


def test_variants_all_norms_and_alternate(local):
    """The comparison's arms: CIN in every instance norm (decoder too), and conditional with alternating batches."""
    from torch.nn.modules.instancenorm import _InstanceNorm

    encoder_only = make_trainer("nnUNetTrainerCIN")
    decoder_norms = [m for m in encoder_only.network.decoder.modules() if isinstance(m, _InstanceNorm)]
    assert decoder_norms  # the method: the decoder keeps plain instance norm

    every = make_trainer("nnUNetTrainerCINAllNorms_5epochs")
    assert every.num_epochs == 5
    assert every.configuration_manager.network_arch_init_kwargs["cin_scope"] == "all"
    assert not [m for m in every.network.modules() if isinstance(m, _InstanceNorm)]
    in_decoder = {id(m) for m in every.network.decoder.modules()} & {id(m) for m in cin_layers(every.network)}
    assert len(in_decoder) >= len(decoder_norms)  # the decoder's norms became CIN layers
    every.dataloader_train, every.dataloader_val = every.get_dataloaders()
    ok, _ = check_conditioning(every, mixed_batches(every), "train_step")
    assert ok

    alternate = make_trainer("nnUNetTrainerCINAlternate")
    assert alternate.conditioned and cin_layers(alternate.network)
    assert alternate.configuration_manager.network_arch_init_kwargs["cin_scope"] == "encoder"
    alternate.dataloader_train, alternate.dataloader_val = alternate.get_dataloaders()
    batches = [next(alternate.dataloader_train) for _ in range(4)]  # after the warm-up batch 0 (CT): MR, CT, ...
    assert [{modality_of(k) for k in b["keys"]} for b in batches] == [{1}, {0}, {1}, {0}]
    ok, seen = check_conditioning(alternate, batches, "train_step")
    assert ok and seen == {0, 1}


def test_trainer_names_found_by_nnunet(planned, monkeypatch):
    """nnU-Net's own lookup finds our trainers, their short schedules and a user's subclass in another folder."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    paths, env = planned
    monkeypatch.setenv("nnUNet_extTrainer", env["nnUNet_extTrainer"])
    expected = {"nnUNetTrainerCIN": None, "nnUNetTrainerCIN_1epoch": 1, "nnUNetTrainerCIN_250epochs": 250,
                "nnUNetTrainerJoint_5epochs": 5, "nnUNetTrainerJointAlternate_20epochs": 20,
                "nnUNetTrainerSingleModality_CT": None, "nnUNetTrainerSingleModality_MR_50epochs": 50,
                "nnUNetTrainerCINAllNorms": None, "nnUNetTrainerCINAllNorms_5epochs": 5,
                "nnUNetTrainerCINAlternate_10epochs": 10, "nnUNetTrainerCINTest": None}
    for name, epochs in expected.items():
        cls = recursive_find_trainer_class_by_name(name)
        assert cls.__name__ == name and cls.schedule_epochs == epochs
        assert any(base.__name__ == "nnUNetTrainerCIN" for base in cls.__mro__)
    with pytest.raises(RuntimeError, match="Could not find"):
        recursive_find_trainer_class_by_name("nnUNetTrainerCIN_7epochs")


def test_short_schedule_sets_epochs(local):
    trainer = make_trainer("nnUNetTrainerJointAlternate_10epochs")
    assert trainer.num_epochs == 10 and trainer.modality_sampling == "alternate" and not trainer.conditioned


def test_checkpoint_modalities_of_older_and_current_checkpoints():
    """Checkpoints written before the modalities travelled in the plans hold checkpoint["modalities"] (also converted
    files); current ones hold them in init_args' plans only; nnU-Net's plain checkpoints hold none."""
    current = {"init_args": {"plans": {"cin": {"modalities": ["CT", "MR"]}}, "configuration": "3d_fullres"}}
    assert checkpoint_modalities(current) == ["CT", "MR"]
    older = {"modalities": ["MR"], "init_args": {"plans": {"cin": {"modalities": ["CT", "MR"]}}}}
    assert checkpoint_modalities(older) == ["MR"]
    assert checkpoint_modalities({"init_args": {"plans": {"configurations": {}}}}) is None


def test_stratified_split():
    from nnunet_cin.training.splits import stratified_crossval_split

    cases = [f"ct_{i:04d}" for i in range(7)] + [f"mr_{i:04d}" for i in range(3)]
    splits = stratified_crossval_split(cases, {c: c[:2] for c in cases})
    assert len(splits) == 5
    assert sorted(sum((s["val"] for s in splits), [])) == sorted(cases)
    for s in splits:
        assert set(s["train"]) | set(s["val"]) == set(cases) and not set(s["train"]) & set(s["val"])
        assert len(s["val"]) == 2
    assert splits == stratified_crossval_split(cases, {c: c[:2] for c in cases})  # seeded
    assert sorted(len([c for c in s["val"] if c.startswith("mr")]) for s in splits) == [0, 0, 1, 1, 1]


# ------------------------------------------------------------------------------------------- seeded training
class TinySeededRun:
    """In-process runs of `trainer_class`: 2 epochs of 2 iterations (1 validation iteration), no final validation
    (nnU-Net's run_training entry point runs that separately)."""

    @staticmethod
    def trainer(trainer_class, continue_training=False):
        from nnunetv2.paths import nnUNet_preprocessed

        folder = Path(nnUNet_preprocessed) / DATASET
        plans = {**load_json(folder / f"{PLANS}.json"), "continue_training": continue_training}
        trainer = trainer_class(plans, "3d_fullres", 0, load_json(folder / "dataset.json"), torch.device("cpu"))
        trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 2, 2, 1
        return trainer

    @classmethod
    def train(cls, trainer_class):
        trainer = cls.trainer(trainer_class)
        trainer.run_training()
        return cls.final(trainer), load_json(Path(trainer.output_folder) / "debug.json")

    @staticmethod
    def final(trainer) -> dict:
        return torch.load(Path(trainer.output_folder) / "checkpoint_final.pth", map_location="cpu",
                          weights_only=False)


def same_weights(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_bit_identical_weights(local, monkeypatch):
    """nnUNet_cin_seed seeds network initialisation, sampling and augmentation (nnUNet_n_proc_DA=0, CPU): two runs
    with the same seed end with identical weights, a third with another seed does not."""
    from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_cin_seed", "3")
    first, debug = TinySeededRun.train(nnUNetTrainerCIN)
    second, _ = TinySeededRun.train(nnUNetTrainerCIN)  # same folder: overwrites the first run
    monkeypatch.setenv("nnUNet_cin_seed", "4")
    other, _ = TinySeededRun.train(nnUNetTrainerCIN)

    assert first["current_epoch"] == second["current_epoch"] == 2
    assert same_weights(first["network_weights"], second["network_weights"])
    assert not same_weights(first["network_weights"], other["network_weights"])
    # the losses of every epoch, too (what the log and progress.png show)
    assert first["logging"]["train_losses"] == second["logging"]["train_losses"] != other["logging"]["train_losses"]
    assert first["init_args"]["seed"] == 3 and other["init_args"]["seed"] == 4 and debug["seed"] == "3"
    assert "rng_state" in first["init_args"]  # for --c


class Interrupted(Exception):
    pass


def stops_when_asked():
    """nnUNetTrainerCIN, interrupted (an exception) after epoch 0 when CIN_TEST_INTERRUPT=1; its checkpoint_latest.pth
    comes from the time rule (every 0 minutes; the epoch rule would wait 100 epochs)."""
    from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN

    class StopsWhenAsked(nnUNetTrainerCIN):
        latest_checkpoint_epochs, latest_checkpoint_minutes = 100, 0

        def on_epoch_end(self):
            super().on_epoch_end()
            if os.environ.get("CIN_TEST_INTERRUPT") == "1":
                raise Interrupted

    return StopsWhenAsked


def interrupt_after_epoch_0(trainer_class, monkeypatch) -> Path:
    monkeypatch.setenv("CIN_TEST_INTERRUPT", "1")
    with pytest.raises(Interrupted):
        TinySeededRun.trainer(trainer_class).run_training()
    monkeypatch.delenv("CIN_TEST_INTERRUPT")
    return local_fold(trainer_class)


def local_fold(trainer_class) -> Path:
    from nnunetv2.paths import nnUNet_results

    return Path(nnUNet_results) / DATASET / f"{trainer_class.__name__}__{PLANS}__3d_fullres" / "fold_0"


def test_seeded_run_continued_with_c_computes_what_an_uninterrupted_run_does(local, monkeypatch):
    """--c restores the generators' states saved in checkpoint_latest.pth: on CPU without workers, a seeded run
    interrupted after epoch 0 and continued ends with the weights of the same run uninterrupted."""
    from nnunetv2.run.run_training import maybe_load_checkpoint

    StopsWhenAsked = stops_when_asked()
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_cin_seed", "3")
    fold = local_fold(StopsWhenAsked)
    whole, _ = TinySeededRun.train(StopsWhenAsked)
    (fold / "checkpoint_final.pth").unlink()

    interrupt_after_epoch_0(StopsWhenAsked, monkeypatch)
    assert torch.load(fold / "checkpoint_latest.pth", weights_only=False)["current_epoch"] == 1  # the time rule
    (fold / "checkpoint_best.pth").unlink()  # (written after epoch 0 as well; --c must not need it)
    continued = TinySeededRun.trainer(StopsWhenAsked, continue_training=True)
    maybe_load_checkpoint(continued, True, False)  # nnUNetv2_train --c
    assert continued.current_epoch == 1
    continued.run_training()
    final = TinySeededRun.final(continued)
    assert same_weights(whole["network_weights"], final["network_weights"])
    assert whole["logging"]["train_losses"] == final["logging"]["train_losses"]

    # --c continues a run with the seed it was started with
    monkeypatch.setenv("nnUNet_cin_seed", "4")
    with pytest.raises(ValueError, match="trained with seed 3, this run has seed 4.*nnUNet_cin_seed=3"):
        maybe_load_checkpoint(TinySeededRun.trainer(StopsWhenAsked, continue_training=True), True, False)




def test_seed_class_attribute_and_environment(local, monkeypatch):
    from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN

    monkeypatch.delenv("nnUNet_cin_seed", raising=False)
    assert make_trainer("nnUNetTrainerCIN").seed is None  # nnU-Net's behaviour: unseeded
    monkeypatch.setattr(nnUNetTrainerCIN, "seed", 21)  # as a subclass attribute would; every trainer of ours has it
    for name in ("nnUNetTrainerCIN", "nnUNetTrainerJoint_5epochs", "nnUNetTrainerSingleModality_CT"):
        assert make_trainer(name).seed == 21, name
    monkeypatch.setenv("nnUNet_cin_seed", "8")
    assert make_trainer("nnUNetTrainerJointAlternate").seed == 8  # the environment wins


# ------------------------------------------------------------------------------------------------------ resume
RESUME_TRAINER = '''
import json
import os

import torch

from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN
from nnunet_cin.training.sampling import ModalityDataLoader


class RecordingLoader(ModalityDataLoader):
    def get_indices(self):
        number, keys = self.batch_number(), super().get_indices()
        with open(os.environ["CIN_TEST_BATCH_LOG"], "a") as f:
            f.write(json.dumps([number, [str(k) for k in keys]]) + "\\n")
        return keys


class nnUNetTrainerCINResumeTest(nnUNetTrainerCIN):
    """3 epochs of 3 iterations, one modality per batch in turn (every training batch's number and cases go to
    $CIN_TEST_BATCH_LOG); with CIN_TEST_KILL_AFTER_EPOCH=E the process dies (no clean-up) once epoch E has ended."""
    modality_sampling = "alternate"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 3, 3, 1

    def modality_data_loader(self, dataset, patch_size, final_patch_size, transforms, training: bool):
        loader = super().modality_data_loader(dataset, patch_size, final_patch_size, transforms, training)
        if training:
            loader.__class__ = RecordingLoader
        return loader

    def on_epoch_end(self):
        super().on_epoch_end()
        if os.environ.get("CIN_TEST_KILL_AFTER_EPOCH") == str(self.current_epoch - 1):
            os._exit(17)

    def perform_actual_validation(self, save_probabilities: bool = False):
        pass
'''


def read_batch_log(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_interrupted_run_continues_where_it_stopped(planned, tmp_path):
    """A short run (3 epochs; nnU-Net writes checkpoint_latest.pth only every 50) killed after epoch 1 continues
    with --c at epoch 2: epochs 0-1 are not trained again, and the alternate sampler's cycle goes on where it
    stopped."""
    paths, env = planned
    (paths["user_trainers"] / "nnUNetTrainerCINResumeTest.py").write_text(RESUME_TRAINER)
    env = {**env, "nnUNet_cin_seed": "5"}
    train = [BIN / "nnUNetv2_train", DATASET_ID, "3d_fullres", 0, "-tr", "nnUNetTrainerCINResumeTest", "-p", PLANS,
             "-device", "cpu"]
    fold = paths["results"] / DATASET / f"nnUNetTrainerCINResumeTest__{PLANS}__3d_fullres" / "fold_0"
    log_killed, log_continued = tmp_path / "killed.jsonl", tmp_path / "continued.jsonl"

    killed = subprocess.run([str(c) for c in train], env={**env, "CIN_TEST_KILL_AFTER_EPOCH": "1",
                                                          "CIN_TEST_BATCH_LOG": str(log_killed)},
                            capture_output=True, text=True, timeout=900)
    assert killed.returncode == 17, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert not (fold / "checkpoint_final.pth").exists()
    latest = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert latest["current_epoch"] == 2  # written after epoch 1 (and 0) by our schedule

    continued = run(train + ["--c"], env, {"CIN_TEST_BATCH_LOG": str(log_continued)})
    assert "Epoch 2" in continued and "Epoch 0" not in continued and "Epoch 1" not in continued
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3
    starts = final["logging"]["epoch_start_timestamps"]
    assert len(starts) == 3 and starts[:2] == latest["logging"]["epoch_start_timestamps"][:2]  # kept, not retrained
    assert not (fold / "checkpoint_latest.pth").exists()  # removed at the end, as nnU-Net does

    # the alternate cycle: batch t is modality t mod 2 (CT, MR, ...); batch 0 (and 6 in the continued run) is the
    # warm-up batch nnU-Net draws when it builds the loaders. The continued run trains on batches 7, 8, 9.
    killed_batches, continued_batches = read_batch_log(log_killed), read_batch_log(log_continued)
    assert [n for n, _ in killed_batches] == list(range(7))
    assert [n for n, _ in continued_batches] == [6, 7, 8, 9]
    for n, keys in killed_batches + continued_batches:
        assert {modality_of(k) for k in keys} == {n % 2}, (n, keys)


def test_c_with_a_truncated_checkpoint_falls_back_to_the_next_readable_one(local, monkeypatch, capsys):
    """nnU-Net's --c picks checkpoint_latest.pth when it exists; cut in half (`truncate -s 50%`), our trainer names it
    and continues from checkpoint_best.pth. With no readable checkpoint left, --c stops with an error naming each
    file; --val with a broken checkpoint_final.pth names it."""
    from nnunetv2.run.run_training import maybe_load_checkpoint

    from nnunet_cin.training.resume import UnreadableCheckpoint

    StopsWhenAsked = stops_when_asked()
    fold = interrupt_after_epoch_0(StopsWhenAsked, monkeypatch)
    latest = fold / "checkpoint_latest.pth"
    os.truncate(latest, latest.stat().st_size // 2)
    best = torch.load(fold / "checkpoint_best.pth", map_location="cpu", weights_only=False)
    capsys.readouterr()

    trainer = TinySeededRun.trainer(StopsWhenAsked, continue_training=True)
    maybe_load_checkpoint(trainer, True, False)  # nnUNetv2_train --c
    out = capsys.readouterr().out
    assert f"{latest} cannot be read" in out and f"Continuing from {fold / 'checkpoint_best.pth'} instead" in out
    assert trainer.current_epoch == best["current_epoch"] == 1
    assert same_weights(trainer.network.state_dict(), best["network_weights"])
    trainer.run_training()
    assert TinySeededRun.final(trainer)["current_epoch"] == 2
    assert not latest.exists()

    for name in ("checkpoint_final.pth", "checkpoint_best.pth"):
        os.truncate(fold / name, 1000)
    with pytest.raises(UnreadableCheckpoint, match="no checkpoint it can read") as e:
        maybe_load_checkpoint(TinySeededRun.trainer(StopsWhenAsked, continue_training=True), True, False)
    assert f"{fold / 'checkpoint_final.pth'} cannot be read" in str(e.value)
    assert f"{fold / 'checkpoint_best.pth'} cannot be read" in str(e.value)
    with pytest.raises(UnreadableCheckpoint, match="checkpoint_final.pth cannot be read"):
        maybe_load_checkpoint(TinySeededRun.trainer(StopsWhenAsked), False, True)  # nnUNetv2_train --val
