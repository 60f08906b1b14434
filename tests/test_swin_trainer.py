"""nnUNetTrainerCSwinUNETR / nnUNetTrainerSwinUNETRJoint: the network the trainer builds from plans, patch size,
deep supervision, and a tiny end-to-end train + predict through nnU-Net's real commands on CPU."""
import json
import warnings
from copy import deepcopy

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunet_cin.cin import cin_layers, condition
from nnunet_cin.plans import checkpoint_modalities
from nnunet_cin.networks.swin import ConditionalSwinUNETR, PatchMerging, SwinBlock
from nnunet_cin.training.transformer_trainers import SWIN_UNETR_CLASS, nnUNetTrainerCSwinUNETR
from nnunet_cin.trainers.nnUNetTrainerSwinUNETRJoint import nnUNetTrainerSwinUNETRJoint
from nnunet_cin.training.transformer_trainers import nnUNetTrainerCViT
from nnunet_cin.networks.vit import TokenConditionalInstanceNorm
from nnunet_helpers import TINY_MODEL_ID
from transformer_e2e import predict_test_cases, session_planned_data, train_user_trainer

DATASET = TINY_MODEL_ID


class Tiny:
    """Small Swin for CPU tests: 2 stages -> patch sides multiples of 2 * 2^2 = 8."""
    feature_size, depths, num_heads, window_size = 8, (2, 2), (2, 4), 4


class TinyCSwin(Tiny, nnUNetTrainerCSwinUNETR):
    pass


class TinySwinJoint(Tiny, nnUNetTrainerSwinUNETRJoint):
    pass


pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.fixture(scope="module")
def planned(tiny_model):
    """The session's planned conditional data (transformer_e2e.session_planned_data), read only."""
    return session_planned_data(tiny_model)


def make_trainer(cls, planned, configuration="3d_fullres", patch_size=None):
    plans = deepcopy(planned.plans)
    if patch_size is not None:
        plans["configurations"][configuration]["patch_size"] = list(patch_size)
    plans["continue_training"] = False  # nnUNetv2_train adds this key; the trainer pops it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(plans, configuration, 0, planned.dataset_json, torch.device("cpu"))


def build(trainer, deep_supervision=True):
    return trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1,
                                              trainer.label_manager.num_segmentation_heads, deep_supervision)


# ---- the network the trainer builds -------------------------------------------------------------------------

def test_trainer_network_is_cswin_and_joint_uses_layernorm(planned, nnunet_env):
    cswin, joint = build(make_trainer(TinyCSwin, planned)), build(make_trainer(TinySwinJoint, planned))
    assert type(cswin) is ConditionalSwinUNETR and type(joint) is ConditionalSwinUNETR
    for net, norm in ((cswin, TokenConditionalInstanceNorm), (joint, nn.LayerNorm)):
        blocks = [m for m in net.modules() if isinstance(m, SwinBlock)]
        merges = [m for m in net.modules() if isinstance(m, PatchMerging)]
        assert len(blocks) == 4 and len(merges) == 2
        assert all(type(b.norm1) is norm and type(b.norm2) is norm for b in blocks)
        assert all(type(m.norm) is norm for m in merges)
    assert {m.num_modalities for m in cin_layers(cswin)} == {2} and not cin_layers(joint)
    assert issubclass(nnUNetTrainerCSwinUNETR, nnUNetTrainerCViT)


def test_plans_record_the_swin_unetr_and_its_hyper_parameters(planned, nnunet_env):
    trainer = make_trainer(TinyCSwin, planned)
    cfg = trainer.plans_manager.plans["configurations"]["3d_fullres"]
    arch = cfg["architecture"]
    assert arch["network_class_name"] == SWIN_UNETR_CLASS == "nnunet_cin.networks.ConditionalSwinUNETR"
    assert arch["arch_kwargs"] == {
        "patch_size": cfg["patch_size"], "token_patch_size": [2, 2, 2], "feature_size": 8, "depths": [2, 2],
        "num_heads": [2, 4], "window_size": [4, 4, 4], "mlp_ratio": 4.0, "num_modalities": 2, "norm": "cin",
        "qkv_bias": True, "dropout": 0.0, "attn_dropout": 0.0, "drop_path_rate": 0.0, "use_checkpoint": False}
    json.dumps(trainer.plans_manager.plans)
    assert make_trainer(TinySwinJoint, planned).configuration_manager.network_arch_init_kwargs["norm"] == "layernorm"
    defaults = make_trainer(nnUNetTrainerCSwinUNETR, planned).configuration_manager
    kw = defaults.network_arch_init_kwargs
    assert (kw["feature_size"], kw["depths"], kw["num_heads"], kw["window_size"]) == (48, [2] * 4, [3, 6, 12, 24],
                                                                                      [7] * 3)
    assert all(s % 32 == 0 for s in defaults.patch_size)  # Swin-UNETR: 2 * 2^4
    assert planned.plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] != SWIN_UNETR_CLASS
    # the network from the dataset's plans (no trainer instance) is the trainer's
    pm = PlansManager(deepcopy(planned.plans))
    from_dataset = TinyCSwin.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 8)
    assert type(from_dataset) is ConditionalSwinUNETR
    from_dataset.load_state_dict(build(trainer).state_dict())


@pytest.mark.parametrize("configuration,planned_patch,expected", [
    ("3d_fullres", (20, 27, 13), [24, 32, 16]),  # multiples of 8
    ("3d_fullres", (5, 8, 7), [8, 16, 8]),  # never a single deepest token: the longest (relative) axis grows
    ("2d", (30, 44), [32, 48]),
])
def test_awkward_plans_patch_sizes_and_deep_supervision(planned, nnunet_env, configuration, planned_patch, expected):
    trainer = make_trainer(TinyCSwin, planned, configuration, planned_patch)
    assert trainer.configuration_manager.patch_size == expected
    net = build(trainer).eval()
    with torch.no_grad(), condition(net, torch.tensor([0, 1])):
        outputs = net(torch.randn(2, 1, *expected))
    scales = trainer._get_deep_supervision_scales()
    assert len(outputs) == len(scales) == 3 and scales[0] == [1.0] * len(expected)
    for out, scale in zip(outputs, scales):  # nnU-Net's loss and target downsampling use these scales
        assert list(out.shape[2:]) == [round(s * f) for s, f in zip(expected, scale)] and out.shape[:2] == (2, 8)
    trainer.enable_deep_supervision = False
    assert trainer._get_deep_supervision_scales() is None


def test_short_schedules_exist():
    from nnunet_cin.trainers import nnUNetTrainerCSwinUNETR as cswin_module
    from nnunet_cin.trainers import nnUNetTrainerSwinUNETRJoint as joint_module
    assert cswin_module.nnUNetTrainerCSwinUNETR_5epochs.schedule_epochs == 5
    assert issubclass(cswin_module.nnUNetTrainerCSwinUNETR_1epoch, nnUNetTrainerCSwinUNETR)
    assert issubclass(joint_module.nnUNetTrainerSwinUNETRJoint_10epochs, nnUNetTrainerSwinUNETRJoint)


# ---- end to end -----------------------------------------------------------------------------------------------

TINY_TRAINER = '''
import torch
from nnunet_cin.trainers.nnUNetTrainerCSwinUNETR import nnUNetTrainerCSwinUNETR


class nnUNetTrainerCSwinTiny(nnUNetTrainerCSwinUNETR):
    """A user's own variant: tiny Swin (2 stages, checkpointed blocks), one epoch of two steps, no test-time
    mirroring (as nnU-Net's nnUNetTrainer_noMirroring) to keep CPU time low."""
    feature_size, depths, num_heads, window_size, use_checkpoint = 8, (2, 2), (2, 4), 4, True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        out = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return out


class nnUNetTrainerSwinJointTiny(nnUNetTrainerCSwinTiny):
    """Its unconditioned counterpart (LayerNorm in the transformer): the pretrained weights of the test."""
    conditioned = False
'''


def test_train_and_predict_through_the_real_commands(planned, nnunet_env, tmp_path):
    # trained from the weights of its unconditioned counterpart (nnunet-cin convert-pretrained, -pretrained_weights)
    model, ckpt, saved, env = train_user_trainer(planned, nnunet_env, tmp_path, DATASET, "nnUNetTrainerCSwinTiny",
                                                 TINY_TRAINER, pretrained_from="nnUNetTrainerSwinJointTiny")
    assert checkpoint_modalities(ckpt) == ["CT", "MR"] and ckpt["current_epoch"] == 1
    weights = ckpt["network_weights"]
    assert weights["encoder.swin.stages.1.blocks.1.norm2.weight"].shape == (2, 16)  # CIN rows per modality
    assert weights["encoder.swin.stages.0.downsample.norm.weight"].shape == (2, 64)
    assert saved["architecture"]["network_class_name"] == SWIN_UNETR_CLASS
    assert all(s % 8 == 0 for s in saved["patch_size"])
    assert "foreground_mean" in json.loads((model / "fold_0" / "validation" / "summary.json").read_text())

    # the model folder alone describes the network (what nnU-Net's predictor does)
    net = get_network_from_plans(SWIN_UNETR_CLASS, saved["architecture"]["arch_kwargs"], [], 1, 8,
                                 deep_supervision=False)
    net.load_state_dict(weights)

    predict_test_cases(planned, nnunet_env, tmp_path, DATASET, "nnUNetTrainerCSwinTiny", env)
