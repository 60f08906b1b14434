"""Each stage resolves the modality rules once and hands them on: the planning command builds dataset.json's
ModalityRules once per dataset (the fingerprint extractor and the planner get them from it), a trainer once (then
trusts the modality preprocessing stored in each case's properties), and a prediction command once (it decides each
case's modality once; the network is conditioned on what preprocessing wrote into the case's properties). Counted by
wrapping the constructor."""
import json
from contextlib import contextmanager

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, save_json

from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset
from nnunet_cin.inference import predictor as predictor_module
from nnunet_cin.inference.command import predict_entry_point
from nnunet_cin.inference.decisions import ModalityDecisions
from nnunet_cin.modalities import ModalityRules
from nnunet_cin.planning.fingerprint import SAMPLES_ENV

DATASET_ID, DATASET = 993, "Dataset993_SyntheticHeart"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def constructions(monkeypatch):
    """The number of ModalityRules built in this process since the fixture started."""
    count = {"n": 0}
    original = ModalityRules.__init__

    def counting(self, *args, **kwargs):
        count["n"] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(ModalityRules, "__init__", counting)
    return count


def test_planning_training_and_prediction_build_the_rules_once_each(nnunet_env, monkeypatch, constructions):
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_cin.planning.plan_and_preprocess import main as plan_and_preprocess

    monkeypatch.setenv(SAMPLES_ENV, "3e5")
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")  # nnU-Net's planner sets torch's threads from it (0: refused)
    raw = write_nnunet_dataset(nnunet_env.raw, DATASET_ID, cases_per_modality={"CT": 3, "MR": 3}, shape=(20, 20, 20),
                               test_cases_per_modality=1)
    assert plan_and_preprocess(["-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1", "-npfp", "1",
                                "--no_pbar"]) == 0
    assert constructions["n"] == 1  # check_dataset's; not again in the fingerprint extractor nor in the planner

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    constructions["n"] = 0
    trainer = get_trainer_from_args(str(DATASET_ID), "3d_fullres", 0, "nnUNetTrainerCIN", "nnUNetPlansCIN",
                                    device=torch.device("cpu"))
    trainer.initialize()
    loaders = trainer.get_dataloaders()  # splits, per-case modality indices, sampler
    assert constructions["n"] == 1
    # the conditioning index of every case comes from what preprocessing stored (properties["modality"])
    assert trainer.lookup.preprocessed == {**{f"ct_{i:04d}": "CT" for i in range(3)},
                                           **{f"mr_{i:04d}": "MR" for i in range(3)}}
    assert [trainer.lookup.model_index_of(c) for c in ("ct_0001", "mr_0002")] == [0, 1]
    del loaders

    # the untrained network as nnUNetv2_train leaves a model folder, predicted by the command (sequential path)
    save_json(trainer.plans_manager.plans, join(trainer.output_folder_base, "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, join(trainer.output_folder_base, "dataset.json"), sort_keys=False)
    trainer.save_checkpoint(join(trainer.output_folder, "checkpoint_final.pth"))
    for override in (None, "auto"):  # the cases' modalities by the model's rules, then by the modality check
        constructions["n"] = 0
        output = nnunet_env.results / f"pred_{override or 'rules'}"
        with _counted(monkeypatch, ModalityDecisions, "of_files") as decided, \
                _counted(monkeypatch, predictor_module, "condition") as conditioned:
            predict_entry_point(["-i", str(raw / "imagesTs"), "-o", str(output),
                                 "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-device", "cpu",
                                 "--disable_tta", "--disable_progress_bar", "-npp", "0", "-nps", "0",
                                 *(["-m", override] if override else [])])
        assert constructions["n"] == 1, override  # the predictor's, when it loads the model
        assert len(decided) == 1, override  # each case's modality decided once, before anything is written
        # the network conditioned on each case's properties["modality"], in nnU-Net's case order (ct_0003, mr_0003)
        assert [args[1] for args in conditioned] == [0, 1], override


@contextmanager
def _counted(monkeypatch, owner, name):
    """The arguments of every call of owner.name inside the block (the calls still happen)."""
    calls, original = [], getattr(owner, name)

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(owner, name, counting)
        yield calls


def test_the_trainer_trusts_what_preprocessing_stored(nnunet_env, constructions):
    """A case the rules cannot resolve any more (its pattern gone) still gets the modality it was preprocessed as,
    while a case preprocessing stored nothing for falls back to the rules."""
    from nnunet_cin.training.conditioning import ModalityLookup

    rules = ModalityRules(["CT", "MR"], {"CT": "^ct_", "MR": "^mr_"})
    lookup = ModalityLookup(rules, ["MR", "CT"], preprocessed={"odd_case": "MR"})
    assert lookup.model_index_of("odd_case") == 0  # model order (["MR", "CT"]), not the rules' order
    assert lookup.model_index_of("ct_0001") == 1 and lookup.name_of("mr_7") == "MR"
    assert constructions["n"] == 1
    json.dumps(lookup.preprocessed)  # plain data, nothing that holds files open
