"""nnUNetv2_predict_cin with several folds (-f 0 1): the folds' predictions are ensembled as nnU-Net does (the mean of
the folds' logits, then softmax), each fold under the case's modality. The two folds differ in their CIN rows only,
so a prediction that used one fold, or one fold's rows for both, gives other probabilities."""
import numpy as np
import pytest
import torch

from nnunet_helpers import randomise_cin_rows, softmax_of_mean_logits

PLANS = "nnUNetPlansTiny"
CASES = ("ct_0000", "mr_0000")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def two_folds(planned_hearts, nnunet_env):
    """A model folder as nnUNetv2_train leaves it (plans.json, dataset.json, fold_X/checkpoint_final.pth, nnU-Net's
    checkpoint layout) for nnUNetTrainerCIN on conftest's planned hearts: two folds with the same untrained weights
    apart from the CIN rows, each drawn at random."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.run.run_training import get_trainer_from_args

    (nnunet_env.preprocessed / planned_hearts.folder_name).symlink_to(
        planned_hearts.preprocessed / planned_hearts.folder_name)
    trainer = get_trainer_from_args(str(planned_hearts.dataset_id), "3d_fullres", 0, "nnUNetTrainerCIN", PLANS,
                                    device=torch.device("cpu"))
    trainer.initialize()
    folder = nnunet_env.results / planned_hearts.folder_name / f"nnUNetTrainerCIN__{PLANS}__3d_fullres"
    for fold in (0, 1):
        randomise_cin_rows(trainer.network, seed=fold)
        (folder / f"fold_{fold}").mkdir(parents=True, exist_ok=True)  # (the trainer made fold_0)
        trainer.save_checkpoint(str(folder / f"fold_{fold}" / "checkpoint_final.pth"))
    save_json(trainer.plans_manager.plans, str(folder / "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, str(folder / "dataset.json"), sort_keys=False)
    inputs = nnunet_env.raw / "inputs"
    inputs.mkdir()
    for case in CASES:
        (inputs / f"{case}_0000.nii.gz").symlink_to(
            planned_hearts.raw / planned_hearts.folder_name / "imagesTr" / f"{case}_0000.nii.gz")
    return planned_hearts.dataset_id, inputs


def predict(dataset_id, inputs, output, folds):
    """nnUNetv2_predict_cin in-process (each case's modality from the dataset.json rules), with probabilities."""
    from nnunet_cin.inference.predict import predict_entry_point

    predict_entry_point(["-i", str(inputs), "-o", str(output), "-d", str(dataset_id), "-c", "3d_fullres",
                         "-tr", "nnUNetTrainerCIN", "-p", PLANS, "-f", *map(str, folds), "-device", "cpu",
                         "--disable_tta", "--disable_progress_bar", "--save_probabilities", "-npp", "0", "-nps", "0"])
    return {case: np.load(output / f"{case}.npz")["probabilities"] for case in CASES}


def test_two_folds_are_ensembled_like_nnunet(two_folds, tmp_path):
    dataset_id, inputs = two_folds
    single = [predict(dataset_id, inputs, tmp_path / f"fold_{f}", [f]) for f in (0, 1)]
    ensemble = predict(dataset_id, inputs, tmp_path / "ensemble", [0, 1])
    for case in CASES:
        p0, p1 = single[0][case], single[1][case]
        assert np.abs(p0 - p1).max() > 0.05, case  # the folds differ: a one-fold ensemble would be noticed
        expected = softmax_of_mean_logits(p0, p1)
        # (nnU-Net sums each fold's sliding-window logits in float16: ~1e-3 relative error in the logits; a
        # one-fold or one-modality ensemble is off by half the folds' difference, > 0.025)
        np.testing.assert_allclose(ensemble[case], expected, atol=2e-3, err_msg=case)
        for p in (p0, p1):
            assert np.abs(ensemble[case] - p).max() > 0.01, case
