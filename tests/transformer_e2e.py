"""Shared scaffolding of the transformer trainer tests (test_cvit_trainer.py, test_swin_trainer.py): nnU-Net's real
commands in subprocesses, the session's planned conditional data (read only), a user's tiny trainer trained and
predicted."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

import nnunet_cin.trainers

BIN = Path(sys.executable).parent
TRAINERS = nnunet_cin.trainers.__path__[0]
PLANS = "nnUNetPlansCIN"


def run(cmd, env, timeout=900):
    out = subprocess.run([str(BIN / cmd[0]), *map(str, cmd[1:])], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def subprocess_env(paths, ext_trainers=()):
    return dict(os.environ, nnUNet_raw=str(paths.raw), nnUNet_preprocessed=str(paths.preprocessed),
                nnUNet_results=str(paths.results), nnUNet_compile="false", nnUNet_n_proc_DA="0",
                nnUNet_def_n_proc="1", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
                nnUNet_extTrainer=os.pathsep.join([TRAINERS, *map(str, ext_trainers)]))


def session_planned_data(tiny_model: Path) -> SimpleNamespace:
    """The session's planned conditional data (conftest's `tiny_model`: 3 CT + 3 MR generated hearts of 24^3, one test
    case per modality, planned and preprocessed by nnUNetv2_plan_and_preprocess_cin), read only: each test copies it
    into its own folders. Returns the folders, folder_name, plans and dataset_json."""
    from nnunet_helpers import TINY_MODEL_DATASET
    paths = SimpleNamespace(raw=tiny_model / "raw", preprocessed=tiny_model / "preprocessed",
                            folder_name=TINY_MODEL_DATASET)
    pre = paths.preprocessed / TINY_MODEL_DATASET
    paths.plans = json.loads((pre / f"{PLANS}.json").read_text())
    paths.dataset_json = json.loads((pre / "dataset.json").read_text())
    return paths


def train_user_trainer(planned, nnunet_env, tmp_path, dataset: int, trainer: str, source: str,
                       pretrained_from: str = None):
    """nnUNetv2_train of a user's trainer (`source`, written to its own folder on nnUNet_extTrainer before ours) on
    the planned data, with one validation case to keep nnU-Net's final validation short. pretrained_from: another
    trainer of `source` (e.g. the unconditioned counterpart); its network (as nnUNetv2_train builds it, untrained) is
    saved as nnU-Net saves a checkpoint, converted by `nnunet-cin convert-pretrained -tr trainer`, and the training
    starts from it (nnUNetv2_train -pretrained_weights).
    Returns (model folder, checkpoint, the model's plans.json 3d_fullres configuration, env)."""
    for name in ("raw", "preprocessed"):
        shutil.copytree(getattr(planned, name) / planned.folder_name, getattr(nnunet_env, name) / planned.folder_name)
    cases = sorted(p.name[:-len(".nii.gz")] for p in (nnunet_env.raw / planned.folder_name / "labelsTr").iterdir())
    (nnunet_env.preprocessed / planned.folder_name / "splits_final.json").write_text(
        json.dumps([{"train": cases[:-1], "val": cases[-1:]}]))
    ext = tmp_path / "my_trainers"
    ext.mkdir()
    (ext / f"{trainer}.py").write_text(source)
    env = subprocess_env(nnunet_env, [ext])
    extra = []
    if pretrained_from is not None:
        extra = ["-pretrained_weights", convert_pretrained(planned, ext / f"{trainer}.py", pretrained_from, trainer,
                                                          dataset, tmp_path, env)]
    out = run(["nnUNetv2_train", dataset, "3d_fullres", 0, "-tr", trainer, "-p", PLANS, "-device", "cpu", *extra],
              env)
    if extra:
        assert "Loading pretrained weights" in out.stdout
    model = nnunet_env.results / planned.folder_name / f"{trainer}__{PLANS}__3d_fullres"
    ckpt = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    saved = json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]
    return model, ckpt, saved, env


def convert_pretrained(planned, module_file: Path, source_trainer: str, target_trainer: str, dataset: int, tmp_path,
                       env) -> Path:
    """A checkpoint of `source_trainer`'s network on the planned data, converted for `target_trainer` by the
    command `nnunet-cin convert-pretrained`. Returns the converted file."""
    spec = importlib.util.spec_from_file_location("user_trainers_for_conversion", module_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = getattr(module, source_trainer)
    plans = cls.plans_for_training(planned.plans, "3d_fullres", planned.dataset_json)
    pm = PlansManager(plans)
    net = cls.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 8)
    source, converted = tmp_path / f"{source_trainer}.pth", tmp_path / f"{source_trainer}_as_{target_trainer}.pth"
    torch.save({"network_weights": net.state_dict(), "trainer_name": source_trainer,
                "init_args": {"plans": plans, "configuration": "3d_fullres"}}, source)
    run(["nnunet-cin", "convert-pretrained", source, converted, "-d", dataset, "-p", PLANS, "-tr", target_trainer],
        env)
    return converted


def predict_test_cases(planned, nnunet_env, tmp_path, dataset: int, trainer: str, env):
    """nnUNetv2_predict_cin on the test images: one segmentation per image, its size, nnU-Net's label values."""
    images = nnunet_env.raw / planned.folder_name / "imagesTs"
    out = tmp_path / "predictions"
    run(["nnUNetv2_predict_cin", "-i", images, "-o", out, "-d", dataset, "-c", "3d_fullres", "-f", 0,
         "-tr", trainer, "-p", PLANS, "-device", "cpu", "-npp", 0, "-nps", 0, "--disable_tta"], env)
    assert len(list(out.glob("*.nii.gz"))) == len(list(images.iterdir()))
    for image in sorted(images.iterdir()):
        case = image.name[:-len("_0000.nii.gz")]
        pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        assert pred.GetSize() == sitk.ReadImage(str(image)).GetSize()
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= set(range(8))


def nnunets_predict_refuses(planned, nnunet_env, tmp_path, dataset: int, trainer: str, env):
    """nnU-Net's own nnUNetv2_predict on the model stops before predicting anything and names nnUNetv2_predict_cin
    (per-modality normalization: its preprocessor lookup used to fail with "'NoneType' object is not callable")."""
    out = tmp_path / "nnunet_predict"
    images = nnunet_env.raw / planned.folder_name / "imagesTs"
    result = subprocess.run([str(BIN / "nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", str(dataset),
                             "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-p", PLANS, "-device", "cpu"], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode != 0
    assert "nnUNetv2_predict_cin" in result.stderr.splitlines()[-1] and "NoneType" not in result.stderr
    assert not any(out.iterdir())
