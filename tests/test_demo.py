import json
import math
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

# The demo's own trainer name, from a folder the test puts first on nnUNet_extTrainer (nnU-Net takes the first class
# of that name it finds): the demo's quick schedule with our checkpoint schedule (nnunet_cin.training.resume; nnU-Net's
# save_every would write checkpoint_latest.pth only at epoch 50), killed (SIGKILL, as a crash or Ctrl-C would stop it)
# right after epoch N when TEST_STOP_AFTER_EPOCH=N.
STOPPABLE_DEMO_TRAINER = '''
import os
import signal

from nnunet_cin.training.demo_trainers import nnUNetTrainerCINDemoQuick as DemoQuick


class nnUNetTrainerCINDemoQuick(DemoQuick):
    def on_epoch_end(self):
        super().on_epoch_end()
        stop = os.environ.get("TEST_STOP_AFTER_EPOCH")
        if stop is not None and self.current_epoch == int(stop) + 1:
            os.kill(os.getpid(), signal.SIGKILL)
'''


def _epochs_in(log_file):
    return [int(line.split("Epoch ")[1]) for line in log_file.read_text().splitlines()
            if ": Epoch " in line and line.split("Epoch ")[1].strip().isdigit()]


def _training_logs(fold):
    return sorted(fold.glob("training_log_*.txt"), key=lambda f: f.stat().st_mtime)


@pytest.mark.slow
def test_quick_demo_runs_every_stage_resumes_and_redoes_nothing(tmp_path):
    """`nnunet-cin demo --quick`: stopped during training, rerun: training continues from the epoch reached; then
    generate, plan, train, predict with -m CT / -m MR, evaluate (finite Dice), overlays; a third run redoes nothing."""
    out = tmp_path / "demo"
    trainers = tmp_path / "my_trainers"
    trainers.mkdir()
    (trainers / "stoppable_demo_trainer.py").write_text(STOPPABLE_DEMO_TRAINER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_") or k in ("nnUNet_n_proc_DA",
                                                                                        "nnUNet_def_n_proc",
                                                                                        "nnUNet_compile")}
    env["nnUNet_extTrainer"] = str(trainers)  # the demo appends ours after it
    env["nnUNet_def_n_proc"] = "1"  # nnU-Net's validation export and evaluation pools: one spawned worker each
    demo = ["nnunet-cin", "demo", "--quick", "-o", str(out), "-device", "cpu"]

    stopped = subprocess.run(demo, env={**env, "TEST_STOP_AFTER_EPOCH": "0"}, capture_output=True, text=True)
    assert stopped.returncode != 0 and "nnunet-cin demo: error:" in stopped.stderr, stopped.stdout[-3000:]
    assert "rerun the same command to continue" in stopped.stderr
    model = out / "nnUNet_results" / "Dataset990_DemoHeart" / "nnUNetTrainerCINDemoQuick__nnUNetPlansCIN__3d_fullres"
    fold = model / "fold_0"
    assert not (fold / "checkpoint_final.pth").exists()
    assert torch.load(fold / "checkpoint_latest.pth", weights_only=False)["current_epoch"] == 1
    assert [_epochs_in(f) for f in _training_logs(fold)] == [[0]]

    run = subprocess.run(demo, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "continuing the interrupted training from epoch 1" in run.stdout
    assert [_epochs_in(f) for f in _training_logs(fold)] == [[0], [1]]  # epoch 0 was not trained again
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert final["current_epoch"] == 2 and len(final["logging"]["train_losses"]) == 2
    assert "already there" in run.stdout  # data and plans were not made again

    # nnU-Net's folders live inside the demo folder
    raw = out / "nnUNet_raw" / "Dataset990_DemoHeart"
    assert (out / "nnUNet_preprocessed" / "Dataset990_DemoHeart" / "nnUNetPlansCIN.json").is_file()
    assert (fold / "progress.png").is_file()

    # one prediction per held-out case, in the input's geometry
    references = sorted((raw / "labelsTs").glob("*.nii.gz"))
    assert len(references) == 2
    for ref in references:
        pred = sitk.ReadImage(str(out / "predictions" / ref.name))
        gt = sitk.ReadImage(str(ref))
        assert pred.GetSize() == gt.GetSize()
        np.testing.assert_allclose(pred.GetSpacing(), gt.GetSpacing(), rtol=1e-5)
        np.testing.assert_allclose(pred.GetDirection(), gt.GetDirection(), atol=1e-6)

    # the numbers: every structure's Dice and their mean, per modality, a number in [0, 1]
    evaluation = json.loads((out / "evaluation.json").read_text())
    summary = evaluation["summary"]
    assert summary["modalities"] == ["CT", "MR"] and summary["num_cases"] == {"CT": 1, "MR": 1}
    assert summary["structures"] == ["MYO", "LA", "LV", "RA", "RV", "AA", "PA", "mean"]
    for modality in ("CT", "MR"):
        for structure in summary["structures"]:
            dice = summary["per_modality"][modality][structure]["Dice"]
            assert isinstance(dice, float) and math.isfinite(dice) and 0 <= dice <= 1, (modality, structure, dice)
        png = out / f"overlay_{modality}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Demo finished" in run.stdout

    # a third run redoes nothing: no nnU-Net command runs, no file is written again
    outputs = [fold / "checkpoint_final.pth", out / "evaluation.json", out / "evaluation.csv",
               out / "overlay_CT.png", out / "overlay_MR.png", *(out / "predictions").glob("*.nii.gz")]
    mtimes = {f: f.stat().st_mtime_ns for f in outputs}
    again = subprocess.run(demo, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "$ nnUNetv2_" not in again.stdout, again.stdout
    assert {f: f.stat().st_mtime_ns for f in outputs} == mtimes
    for line in ("already trained", "CT: already predicted", "MR: already predicted", "already evaluated"):
        assert line in again.stdout

    # SIGTERM during the prediction step (the issue: nnUNetv2_predict_cin's workers stayed behind for hours): the
    # demo passes it on, waits, and leaves no process of the run
    if os.path.isdir("/proc"):
        from nnunet_helpers import descendants, left_running, marked_env, marked_running
        shutil.rmtree(out / "predictions")
        env = marked_env(env)
        with open(tmp_path / "demo_log.txt", "w") as log:
            proc = subprocess.Popen(demo, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while proc.poll() is None and time.time() < deadline and not any(
                    "nnUNetv2_predict_cin" in _cmdline(p) for p in descendants(proc.pid)):
                time.sleep(0.05)
            time.sleep(2)  # the prediction's workers start
            family = descendants(proc.pid)
            assert proc.poll() is None and family, (tmp_path / "demo_log.txt").read_text()[-3000:]
            proc.terminate()
            proc.wait(timeout=60)
            left = left_running(family, 10) + marked_running(env, 10)
        finally:
            proc.kill()
        assert proc.returncode == 128 + signal.SIGTERM, (tmp_path / "demo_log.txt").read_text()[-3000:]
        assert not left, f"processes of the demo still running after 10 s: {left}"


def _cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    except OSError:
        return ""
