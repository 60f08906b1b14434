import json
import os
import subprocess

import numpy as np
import SimpleITK as sitk


def test_quick_demo_runs_every_stage_with_the_real_commands(tmp_path):
    """`nnunet-cin demo --quick`: generate, plan, train, predict with -m CT / -m MR, evaluate, overlays."""
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_") or k in ("nnUNet_n_proc_DA",
                                                                                        "nnUNet_def_n_proc",
                                                                                        "nnUNet_compile")}
    run = subprocess.run(["nnunet-cin", "demo", "--quick", "-o", str(out), "-device", "cpu"], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    # nnU-Net's folders live inside the demo folder
    raw = out / "nnUNet_raw" / "Dataset990_DemoHeart"
    assert (out / "nnUNet_preprocessed" / "Dataset990_DemoHeart" / "nnUNetPlansCIN.json").is_file()
    model = out / "nnUNet_results" / "Dataset990_DemoHeart" / "nnUNetTrainerCINDemoQuick__nnUNetPlansCIN__3d_fullres"
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    assert (model / "fold_0" / "progress.png").is_file()

    # one prediction per held-out case, in the input's geometry
    for ref in sorted((raw / "labelsTs").glob("*.nii.gz")):
        pred = sitk.ReadImage(str(out / "predictions" / ref.name))
        gt = sitk.ReadImage(str(ref))
        assert pred.GetSize() == gt.GetSize()
        np.testing.assert_allclose(pred.GetSpacing(), gt.GetSpacing(), rtol=1e-5)
        np.testing.assert_allclose(pred.GetDirection(), gt.GetDirection(), atol=1e-6)

    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["summary"]["modalities"] == ["CT", "MR"]
    assert evaluation["summary"]["num_cases"] == {"CT": 1, "MR": 1}
    for modality in ("CT", "MR"):
        png = out / f"overlay_{modality}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Demo finished" in run.stdout

    # rerunning continues: nothing is generated, planned or trained again
    again = subprocess.run(["nnunet-cin", "demo", "--quick", "-o", str(out), "-device", "cpu"], env=env,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already") >= 3
