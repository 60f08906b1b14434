"""nnUNetTrainerCIN and its baselines through nnU-Net's real entry points (`nnUNetv2_train`, nnU-Net's trainer lookup,
its final validation and pretrained-weights loader), on tiny generated CT + MR data.

The data is conftest's `planned_hearts` (plain nnU-Net plans: the trainer converts the architecture; "nnUNetPlansTiny"
has a narrower U-Net, same preprocessed data). The short-run trainers are users' subclasses in their own folder on
nnUNet_extTrainer, next to ours, as the README tells users to do (mixins: nnunet_helpers).
"""
import argparse
import json
import os
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.logging.nnunet_logger import LocalLogger

from nnunet_cin.cin import cin_layers, condition
from nnunet_cin.plans import checkpoint_modalities
from nnunet_helpers import (epochs_in, load_checkpoint, nnunet_environment, randomise_cin_rows, run,
                            write_user_trainers)

DATASET_ID, DATASET = 999, "Dataset999_SyntheticHeart"
PLANS = "nnUNetPlansTiny"
# what nnU-Net 2.8.1's nnUNetTrainer.save_checkpoint writes
NNUNET_CHECKPOINT_KEYS = {"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
                          "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes"}

USER_TRAINERS = '''
from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN  # ours: imported absolutely
from nnunet_helpers import EveryModalityValidated, ShortRun


class nnUNetTrainerCINTest(ShortRun, EveryModalityValidated, nnUNetTrainerCIN):
    """A user's variant: epochs of 2 iterations; every validation batch holds a CT and an MR case."""
'''


def modality_of(case: str) -> int:
    """The expected conditioning index, from the case id alone (dataset.json: ["CT", "MR"], "^ct_", "^mr_")."""
    return {"ct_": 0, "mr_": 1}[case[:3]]


@pytest.fixture(scope="module")
def planned(planned_hearts, tmp_path_factory):
    """conftest's planned data, this module's results folder and users' trainer folder, and the environment of
    nnU-Net's commands."""
    root = tmp_path_factory.mktemp("trainer")
    paths = SimpleNamespace(raw=planned_hearts.raw, preprocessed=planned_hearts.preprocessed, results=root / "results",
                            user_trainers=write_user_trainers(root / "user_trainers", USER_TRAINERS))
    paths.results.mkdir()
    paths.env = nnunet_environment(paths, [paths.user_trainers])
    return paths


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def local(planned, nnunet_env):
    """In-process nnU-Net: conftest's fresh folders, with the module's preprocessed dataset linked in."""
    (nnunet_env.preprocessed / DATASET).symlink_to(planned.preprocessed / DATASET)
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
    train = ["nnUNetv2_train", DATASET_ID, "3d_fullres", 0, "-tr", "nnUNetTrainerCINTest", "-p", PLANS, "-device", "cpu"]
    first = run(train, planned.env, {"TEST_EPOCHS": "1", "TEST_SKIP_FINAL_VALIDATION": "1", "nnUNet_cin_seed": "0"}).out
    fold = planned.results / DATASET / f"nnUNetTrainerCINTest__{PLANS}__3d_fullres" / "fold_0"
    after_first = load_checkpoint(fold / "checkpoint_final.pth")
    resumed = run(train + ["--c"], planned.env, {"TEST_EPOCHS": "2", "nnUNet_cin_seed": "0"}).out
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
    final = load_checkpoint(fold / "checkpoint_final.pth")
    assert checkpoint_modalities(final) == ["CT", "MR"] and final["current_epoch"] == 2
    # the per-modality pseudo-Dice, one per epoch: every validation batch held a CT and an MR case
    # (EveryModalityValidated), so each is a number; --c kept epoch 0's (its value:
    # test_pseudo_dice_per_modality_from_hand_made_counts)
    for m in ("CT", "MR"):
        curve, before = final["logging"][f"mean_fg_dice/{m}"], after_first["logging"][f"mean_fg_dice/{m}"]
        assert len(curve) == 2 and np.all(np.isfinite(curve)), (m, curve)
        assert curve[0] == before[0]
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
    splits = load_json(planned.preprocessed / DATASET / "splits_final.json")
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
    (fold / "validation" / "summary.json").unlink()
    out = run(["nnUNetv2_train", DATASET_ID, "3d_fullres", 0, "-tr", "nnUNetTrainerCINTest", "-p", PLANS,
               "-device", "cpu", "--val"], planned.env).out
    assert "Validation Dice per modality" in out
    summary = load_json(fold / "validation" / "summary.json")
    assert set(summary["per_modality"]["modalities"]) == {"CT", "MR"}


def test_nnunets_own_predict_command(trained, planned, tmp_path):
    """nnU-Net's own nnUNetv2_predict cannot give a conditional model each case's modality: it stops, before writing
    anything, with a message that names nnUNetv2_predict_cin (it used to fail with "'NoneType' object is not
    callable" or inside a CIN layer). A plain model (the Joint baseline on nnU-Net's plans) it still serves."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_cin.training.baselines import nnUNetTrainerJoint

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    image = sorted((planned.raw / DATASET / "imagesTr").iterdir())[0]
    (inputs / image.name).symlink_to(image)
    command = ["nnUNetv2_predict", "-i", inputs, "-d", DATASET_ID, "-c", "3d_fullres", "-f", 0, "-p", PLANS,
               "-device", "cpu", "--disable_tta", "-npp", 0, "-nps", 0]
    result = run(command + ["-o", tmp_path / "cin", "-tr", "nnUNetTrainerCINTest"], planned.env, ok=False)
    assert result.returncode != 0
    assert "nnUNetv2_predict_cin" in result.stderr.splitlines()[-1] and "NoneType" not in result.stderr
    assert not any((tmp_path / "cin").iterdir())  # (nnU-Net creates the output folder first)

    # the Joint baseline's model folder, as nnUNetv2_train writes it (its plans, nnU-Net's checkpoint layout)
    fold = trained[0]
    plans = load_json(fold.parent / "plans.json")
    folder = planned.results / DATASET / f"nnUNetTrainerJoint__{PLANS}__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "dataset.json").write_text((fold.parent / "dataset.json").read_text())
    joint_plans = nnUNetTrainerJoint.plans_for_training(load_json(planned.preprocessed / DATASET / f"{PLANS}.json"),
                                                        "3d_fullres", load_json(fold.parent / "dataset.json"))
    (folder / "plans.json").write_text(json.dumps(joint_plans))
    pm = PlansManager(joint_plans)
    net = nnUNetTrainerJoint.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 8, False)
    source = load_checkpoint(fold / "checkpoint_final.pth")
    torch.save({**source, "trainer_name": "nnUNetTrainerJoint", "network_weights": net.state_dict(),
                "init_args": {**source["init_args"], "plans": joint_plans}}, folder / "fold_0" / "checkpoint_final.pth")
    assert plans["configurations"]["3d_fullres"]["preprocessor_name"] == "DefaultPreprocessor"  # nnU-Net's plans
    run(command + ["-o", tmp_path / "joint", "-tr", "nnUNetTrainerJoint"], planned.env)
    assert (tmp_path / "joint" / (image.name[:-len("_0000.nii.gz")] + ".nii.gz")).is_file()


def test_pretrained_plain_to_conditional(planned, local):
    """A plain nnU-Net checkpoint does not fit the conditional network as it is (nnU-Net's own loader refuses it);
    convert_checkpoint makes it fit, and nnUNetv2_train -pretrained_weights then trains from it."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from nnunet_cin.training.convert_pretrained import convert_checkpoint

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

    out = run(["nnUNetv2_train", DATASET_ID, "3d_fullres", 1, "-tr", "nnUNetTrainerCINTest", "-p", PLANS,
               "-device", "cpu", "-pretrained_weights", converted], planned.env,
              {"TEST_SKIP_FINAL_VALIDATION": "1"}).out
    assert "Loading pretrained weights" in out
    assert (planned.results / DATASET / f"nnUNetTrainerCINTest__{PLANS}__3d_fullres" / "fold_1" /
            "checkpoint_final.pth").is_file()


def test_conditional_checkpoint_loads_directly(trained, local):
    """A conditional trainer's checkpoint is a valid -pretrained_weights file for another conditional run (nnU-Net's
    loader, no conversion); for a plain baseline it converts (CIN rows averaged)."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from nnunet_cin.training.convert_pretrained import add_arguments, convert_checkpoint
    from nnunet_cin.training.convert_pretrained import run as run_convert

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


def validation_fold(splits) -> int:
    """A fold whose validation cases include both modalities."""
    return next(i for i, s in enumerate(splits) if {modality_of(c) for c in s["val"]} == {0, 1})


def test_final_validation_predicts_each_case_under_its_modality(local, tmp_path):
    """nnU-Net's own final validation (perform_actual_validation; our trainer conditions it by wrapping the dataset's
    load_case): each validation case's exported probabilities and segmentation are those of nnU-Net's plain
    nnUNetPredictor run inside `condition(network, the case's modality)`; under the other modality they differ."""
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    trainer = make_trainer("nnUNetTrainerCIN")
    trainer.do_split()  # (creates splits_final.json when missing)
    splits = load_json(Path(trainer.preprocessed_dataset_folder_base) / "splits_final.json")
    fold = validation_fold(splits)
    trainer = make_trainer("nnUNetTrainerCIN", fold=fold)
    randomise_cin_rows(trainer.network, seed=0)  # so that the modalities' outputs differ
    trainer.inference_allowed_mirroring_axes = None  # (no test-time mirroring: faster; the same for both)
    trainer.perform_actual_validation(save_probabilities=True)
    exported = Path(trainer.output_folder) / "validation"
    trainer.set_deep_supervision_enabled(False)  # (as perform_actual_validation predicts; it turns it back on)

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=True, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, type(trainer).__name__, None)
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, splits[fold]["val"])
    for case in splits[fold]["val"]:
        data, _, _, properties = dataset.load_case(case)
        data = torch.from_numpy(data[:])
        own, other = modality_of(case), 1 - modality_of(case)
        for index, name in ((own, "own"), (other, "other")):
            with torch.no_grad(), condition(trainer.network, index):
                logits = predictor.predict_sliding_window_return_logits(data).cpu()
            export_prediction_from_logits(logits, properties, trainer.configuration_manager, trainer.plans_manager,
                                          trainer.dataset_json, str(tmp_path / f"{case}_{name}"), True)
        validated = np.load(exported / f"{case}.npz")["probabilities"]
        np.testing.assert_allclose(validated, np.load(tmp_path / f"{case}_own.npz")["probabilities"], atol=1e-6)
        assert np.abs(validated - np.load(tmp_path / f"{case}_other.npz")["probabilities"]).max() > 0.05, case
        segmentation = read_segmentation(exported / f"{case}.nii.gz")
        np.testing.assert_array_equal(segmentation, read_segmentation(tmp_path / f"{case}_own.nii.gz"))
        assert not np.array_equal(segmentation, read_segmentation(tmp_path / f"{case}_other.nii.gz")), case
    assert all(layer.context_modality is None for layer in cin_layers(trainer.network))


def read_segmentation(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


class OracleNetwork(torch.nn.Module):
    """Stands in for the network in validation: it predicts the label map written into the input's channel 0 (one-hot
    logits), so that a test decides each sample's predicted segmentation."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return 10 * torch.nn.functional.one_hot(x[:, 0].round().long(), self.num_classes).movedim(-1, 1).float()


def labels(*runs) -> torch.Tensor:
    """A 1 x 1 x 4 x 4 label map from (first voxel, last voxel + 1, label) runs over its 16 voxels; background
    elsewhere."""
    flat = torch.zeros(16)
    for first, end, label in runs:
        flat[first:end] = label
    return flat.reshape(1, 1, 4, 4)


def test_pseudo_dice_per_modality_from_hand_made_counts(local):
    """The per-modality pseudo-Dice of an epoch (validation_step per modality part, then on_validation_epoch_end) from
    predictions and targets made by hand: the counts summed per modality over the epoch's batches, 2tp / (2tp + fp +
    fn) per foreground class, a class absent from targets and predictions left out, then the mean over classes."""
    trainer = make_trainer("nnUNetTrainerCIN")
    trainer.network = OracleNetwork(trainer.label_manager.num_segmentation_heads)
    trainer.enable_deep_supervision = False  # (the oracle gives one output)
    trainer.loss = trainer._build_loss()
    # (case, target runs, predicted runs) over 16 voxels; the counts per foreground class:
    batches = [[("ct_0000", [(0, 8, 1), (8, 12, 2)], [(4, 12, 1)]),  # class 1: tp 4, fp 4, fn 4; class 2: fn 4
                ("mr_0000", [(0, 2, 1), (8, 12, 3)], [(0, 8, 1), (8, 12, 3)]),  # class 1: tp 2, fp 6; class 3: tp 4
                ("ct_0001", [(0, 8, 1)], [(0, 8, 1)])],  # class 1: tp 8
               [("ct_0002", [(0, 4, 2)], [(0, 2, 2), (2, 4, 4)]),  # class 2: tp 2, fn 2; class 4: fp 2
                ("ct_0003", [], [])]]  # (a batch without MR)
    outputs = []
    with torch.no_grad():
        for batch in batches:
            outputs.append(trainer.validation_step({
                "data": torch.stack([labels(*predicted) for _, _, predicted in batch]),
                "target": torch.stack([labels(*target) for _, target, _ in batch]),
                "keys": [case for case, _, _ in batch]}))
    trainer.on_validation_epoch_end(outputs)

    logged = {key: trainer.logger.get_value(key, step=-1) for key in
              ("mean_fg_dice/CT", "mean_fg_dice/MR", "mean_fg_dice")}
    # CT: class 1 tp 12, fp 4, fn 4 -> 24/32; class 2 tp 2, fn 6 -> 4/10; class 4 fp 2 -> 0
    assert logged["mean_fg_dice/CT"] == pytest.approx((24 / 32 + 4 / 10 + 0) / 3)
    # MR: class 1 tp 2, fp 6 -> 4/10; class 3 tp 4 -> 1
    assert logged["mean_fg_dice/MR"] == pytest.approx((4 / 10 + 1) / 2)
    # nnU-Net's own pseudo-Dice over all cases: class 1 tp 14, fp 10, fn 4 -> 28/42; class 2 4/10; class 3 1; class 4 0
    assert logged["mean_fg_dice"] == pytest.approx((28 / 42 + 4 / 10 + 1 + 0) / 4)


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

    with pytest.raises(ValueError, match="T2"):  # a literal single-modality trainer for a modality the data lack
        make_trainer("nnUNetTrainerSingleModality_T2")


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


def test_variant_adapters(local):
    """nnUNetTrainerCINAdapters: CIN in every norm, each followed by every modality's residual adapter; the plans
    record them; a training step on a one-modality batch still gives every adapter a gradient (DDP without
    find_unused_parameters), zero for the absent modality's."""
    from nnunet_cin.networks.adapters import AdaptedInstanceNorm

    trainer = make_trainer("nnUNetTrainerCINAdapters_5epochs")
    kwargs = trainer.configuration_manager.network_arch_init_kwargs
    assert trainer.num_epochs == 5 and kwargs["cin_scope"] == "all" and kwargs["adapter_modalities"] == [0, 1]
    layers = {id(m): m for m in trainer.network.modules() if isinstance(m, AdaptedInstanceNorm)}
    assert layers and set(layers) == {id(m) for m in cin_layers(trainer.network)}
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    batch = next(trainer.dataloader_train)
    ct = [i for i, k in enumerate(batch["keys"]) if modality_of(k) == 0][:1] or [0]
    one = dict(batch, data=batch["data"][ct], target=[t[ct] for t in batch["target"]],
               keys=[batch["keys"][i] for i in ct])
    trainer.train_step(one)
    seen = modality_of(one["keys"][0])
    for layer in layers.values():
        assert layer.adapter.grad is not None
        assert layer.adapter.grad[1 - seen].abs().sum() == 0 and layer.adapter.grad[seen].abs().sum() > 0


def test_trainer_names_found_by_nnunet(planned, monkeypatch):
    """nnU-Net's own lookup finds our trainers, their short schedules and a user's subclass in another folder."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", planned.env["nnUNet_extTrainer"])
    expected = {"nnUNetTrainerCIN": None, "nnUNetTrainerCIN_1epoch": 1, "nnUNetTrainerCIN_250epochs": 250,
                "nnUNetTrainerJoint_5epochs": 5, "nnUNetTrainerJointAlternate_20epochs": 20,
                "nnUNetTrainerSingleModality_CT": None, "nnUNetTrainerSingleModality_MR_50epochs": 50,
                "nnUNetTrainerCINAllNorms": None, "nnUNetTrainerCINAllNorms_5epochs": 5,
                "nnUNetTrainerCINAlternate_10epochs": 10, "nnUNetTrainerCINTest": 1,
                "nnUNetTrainerCINAdapters": None, "nnUNetTrainerCINAdapters_250epochs": 250}
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
    def trainer(trainer_class, continue_training=False, fold=0, iterations=2):
        from nnunetv2.paths import nnUNet_preprocessed

        folder = Path(nnUNet_preprocessed) / DATASET
        plans = {**load_json(folder / f"{PLANS}.json"), "continue_training": continue_training}
        trainer = trainer_class(plans, "3d_fullres", fold, load_json(folder / "dataset.json"), torch.device("cpu"))
        trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 2, iterations, 1
        return trainer

    @classmethod
    def train(cls, trainer_class, **kwargs):
        trainer = cls.trainer(trainer_class, **kwargs)
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


def test_joint_trains_what_nnunets_trainer_trains_and_cin_starts_there(local, monkeypatch):
    """The reference for what conditioning changes: from the same seed, on a fold with as many CT as MR cases,
    nnUNetTrainerJoint (our data pipeline, sampler and steps, plain network) trains exactly what nnU-Net's own
    nnUNetTrainer (seeded like ours) trains: same batches, losses and weights. nnUNetTrainerCIN starts from the same
    weights on the same first batch (its first loss is nnU-Net's), then its modality rows make it differ."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_cin.training.baselines import nnUNetTrainerJoint
    from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN
    from nnunet_cin.training.mixins import OMPThreads, Seeded

    class nnUNetTrainerSeeded(Seeded, OMPThreads, nnUNetTrainer):
        pass

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_cin_seed", "5")
    # fold "all": the 4 CT and 4 MR cases, whichever split file the session wrote; 1 iteration per epoch, so that
    # epoch 0's loss is the first batch's
    runs = {cls: TinySeededRun.train(cls, fold="all", iterations=1)[0]
            for cls in (nnUNetTrainerSeeded, nnUNetTrainerJoint, nnUNetTrainerCIN)}
    nnunet, joint, cin = runs.values()
    assert joint["logging"]["train_losses"] == nnunet["logging"]["train_losses"]
    assert same_weights(joint["network_weights"], nnunet["network_weights"])
    assert cin["logging"]["train_losses"][0] == nnunet["logging"]["train_losses"][0]
    assert cin["logging"]["train_losses"][1] != nnunet["logging"]["train_losses"][1]


@pytest.mark.slow
def test_same_seed_bit_identical_through_nnunetv2_train_with_default_threads(planned, tmp_path):
    """What a user runs: two `nnUNetv2_train -device cpu` processes with the same nnUNet_cin_seed and nnU-Net's
    default threads (OMP_NUM_THREADS unset: nnU-Net gives torch every core) end with identical weights and losses."""
    env = {k: v for k, v in planned.env.items() if k != "OMP_NUM_THREADS"}
    train = ["nnUNetv2_train", DATASET_ID, "3d_fullres", 0, "-tr", "nnUNetTrainerCINTest", "-p", PLANS,
             "-device", "cpu"]
    final = []
    for i in (1, 2):
        results = tmp_path / f"results_{i}"
        results.mkdir()
        run(train, env, {"nnUNet_results": str(results), "nnUNet_cin_seed": "3", "TEST_EPOCHS": "2",
                         "TEST_SKIP_FINAL_VALIDATION": "1"})
        final.append(load_checkpoint(results / DATASET / f"nnUNetTrainerCINTest__{PLANS}__3d_fullres" / "fold_0" /
                                     "checkpoint_final.pth"))
    assert final[0]["init_args"]["seed"] == final[1]["init_args"]["seed"] == 3
    assert final[0]["logging"]["train_losses"] == final[1]["logging"]["train_losses"]
    assert same_weights(final[0]["network_weights"], final[1]["network_weights"])


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

from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN
from nnunet_cin.training.sampling import ModalityDataLoader
from nnunet_helpers import ShortRun, StopsAfterEpoch


class RecordingLoader(ModalityDataLoader):
    def get_indices(self):
        number, keys = self.batch_number(), super().get_indices()
        with open(os.environ["CIN_TEST_BATCH_LOG"], "a") as f:
            f.write(json.dumps([number, [str(k) for k in keys]]) + "\\n")
        return keys


class nnUNetTrainerCINResumeTest(StopsAfterEpoch, ShortRun, nnUNetTrainerCIN):
    """3 epochs of 3 iterations, one modality per batch in turn (every training batch's number and cases go to
    $CIN_TEST_BATCH_LOG); no final validation."""
    modality_sampling = "alternate"
    schedule_epochs, schedule_iterations, schedule_val_iterations, final_validation = 3, 3, 1, False

    def modality_data_loader(self, dataset, patch_size, final_patch_size, transforms, training: bool):
        loader = super().modality_data_loader(dataset, patch_size, final_patch_size, transforms, training)
        if training:
            loader.__class__ = RecordingLoader
        return loader
'''


def read_batch_log(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_interrupted_run_continues_where_it_stopped(planned, tmp_path):
    """A short run (3 epochs; nnU-Net writes checkpoint_latest.pth only every 50) killed after epoch 1 continues
    with --c at epoch 2: epochs 0-1 are not trained again, and the alternate sampler's cycle goes on where it
    stopped."""
    write_user_trainers(planned.user_trainers, RESUME_TRAINER, "nnUNetTrainerCINResumeTest")
    env = {**planned.env, "nnUNet_cin_seed": "5"}
    train = ["nnUNetv2_train", DATASET_ID, "3d_fullres", 0, "-tr", "nnUNetTrainerCINResumeTest", "-p", PLANS,
             "-device", "cpu"]
    fold = planned.results / DATASET / f"nnUNetTrainerCINResumeTest__{PLANS}__3d_fullres" / "fold_0"
    log_killed, log_continued = tmp_path / "killed.jsonl", tmp_path / "continued.jsonl"

    killed = run(train, env, {"TEST_STOP_AFTER_EPOCH": "1", "CIN_TEST_BATCH_LOG": str(log_killed)}, ok=False)
    assert killed.returncode == -9, killed.out[-6000:]  # SIGKILL
    assert not (fold / "checkpoint_final.pth").exists()
    latest = load_checkpoint(fold / "checkpoint_latest.pth")
    assert latest["current_epoch"] == 2  # written after epoch 1 (and 0) by our schedule

    continued = run(train + ["--c"], env, {"CIN_TEST_BATCH_LOG": str(log_continued)}).out
    assert epochs_in(continued) == [2]
    final = load_checkpoint(fold / "checkpoint_final.pth")
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


# ------------------------------------------------------------------------------------ augmentation worker processes
def test_augmentation_workers_are_seeded_and_keep_modalities_cycle_and_counts(local, monkeypatch):
    """What every GPU user runs (the other tests set nnUNet_n_proc_DA=0): nnUNet_n_proc_DA=2, nnU-Net's
    NonDetMultiThreadedAugmenter with worker processes. Their seeds are worker_seeds(run seed, rank, epoch, loader);
    every batch that comes out of them keeps its case keys (the modalities), the alternate cycle holds for each global
    batch number t = worker + k * 2 (the loader numbers its batches in the worker; recorded in the batch here), and a
    validation batch's per-modality counts add up to nnU-Net's."""
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    from nnunet_cin.training.sampling import ModalityDataLoader
    from nnunet_cin.training.seeding import TRAIN_LOADER, VAL_LOADER, worker_seeds

    class NumberedBatches(ModalityDataLoader):
        def generate_train_batch(self):
            t = self.batch_number()
            return {**super().generate_train_batch(), "t": t}

    monkeypatch.setenv("nnUNet_n_proc_DA", "2")
    monkeypatch.setenv("nnUNet_cin_seed", "5")
    trainer = make_trainer()
    trainer.modality_sampling = "alternate"
    build = trainer.modality_data_loader

    def numbered(*args, **kwargs):
        loader = build(*args, **kwargs)
        loader.__class__ = NumberedBatches
        return loader

    trainer.modality_data_loader = numbered
    train, val = trainer.get_dataloaders()  # each has served one batch already
    try:
        assert isinstance(train, NonDetMultiThreadedAugmenter) and isinstance(val, NonDetMultiThreadedAugmenter)
        assert train.num_processes == 2 and len(train._processes) == 2 and all(p.is_alive() for p in train._processes)
        assert train.seeds == worker_seeds(5, 0, 0, TRAIN_LOADER, 2)
        assert val.seeds == worker_seeds(5, 0, 0, VAL_LOADER, 1)
        assert len(set(train.seeds)) == 2 and train.seeds != worker_seeds(6, 0, 0, TRAIN_LOADER, 2)

        batches = [next(train) for _ in range(12)]
        numbers = [int(b["t"]) for b in batches]
        assert len(set(numbers)) == 12 and {t % 2 for t in numbers} == {0, 1}  # both workers served
        for b in batches:
            assert len(b["keys"]) == trainer.batch_size == b["data"].shape[0]
            assert {modality_of(k) for k in b["keys"]} == {int(b["t"]) % 2}  # batch t is modality t mod 2
        # every worker's batches arrive in its own order, none skipped: t = w, w + 2, w + 4, ...
        for w in (0, 1):
            own = [t for t in numbers if t % 2 == w]
            assert own == sorted(own) and own == list(range(own[0], own[0] + 2 * len(own), 2))

        # validation batches are mixed (random per sample, seeded): the first that holds both modalities
        batch = next(b for b in (next(val) for _ in range(20)) if {modality_of(k) for k in b["keys"]} == {0, 1})
        out = trainer.validation_step(batch)
        for k in ("tp_hard", "fp_hard", "fn_hard"):
            assert out[k + "_per_modality"].shape == (2, *np.shape(out[k]))
            np.testing.assert_array_equal(out[k + "_per_modality"].sum(0), out[k])
    finally:
        for augmenter in (train, val):
            augmenter._finish()
