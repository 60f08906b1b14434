"""Each stage resolves the modality rules once and hands them on: the planning command builds dataset.json's
ModalityRules once per dataset (the fingerprint extractor and the planner get them from it), and a trainer once
(then trusts the modality preprocessing stored in each case's properties). Counted by wrapping the constructor."""
import json

import pytest
import torch

from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset
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


def test_planning_then_training_build_the_rules_once_each(nnunet_env, monkeypatch, constructions):
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_cin.planning.plan_and_preprocess import main as plan_and_preprocess

    monkeypatch.setenv(SAMPLES_ENV, "3e5")
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")  # nnU-Net's planner sets torch's threads from it (0: refused)
    write_nnunet_dataset(nnunet_env.raw, DATASET_ID, cases_per_modality={"CT": 3, "MR": 3}, shape=(20, 20, 20))
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
