"""nnUNetTrainerCViT / nnUNetTrainerViTJoint: the network the trainer builds from plans, patch size, deep supervision,
the optimizer and its warm-up, and a tiny end-to-end run through nnU-Net's real commands on CPU."""
import json
import math
import warnings
from copy import deepcopy

import pytest
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_cin.cin import cin_layers, condition
from nnunet_cin.plans import checkpoint_modalities
from nnunet_cin.training.transformer_trainers import UNETR_CLASS, WarmupPolyLRScheduler, nnUNetTrainerCViT
from nnunet_cin.trainers.nnUNetTrainerViTJoint import nnUNetTrainerViTJoint
from nnunet_cin.networks.unetr import ConditionalUNETR
from nnunet_cin.networks.vit import TokenConditionalInstanceNorm, ViTBlock
from nnunet_helpers import TINY_MODEL_ID
from transformer_e2e import nnunets_predict_refuses, predict_test_cases, session_planned_data, train_user_trainer

DATASET = TINY_MODEL_ID


class Tiny:
    """Small ViT for CPU tests: token 8 -> 3 decoder stages."""
    token_patch_size, hidden_size, depth, num_heads, feature_size = 8, 32, 3, 2, 4


class TinyCViT(Tiny, nnUNetTrainerCViT):
    pass


class TinyViTJoint(Tiny, nnUNetTrainerViTJoint):
    pass




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
        warnings.simplefilter("ignore")  # plain plans: "normalization is NOT per modality"
        return cls(plans, configuration, 0, planned.dataset_json, torch.device("cpu"))


def build(trainer, deep_supervision=True):
    return trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1,
                                              trainer.label_manager.num_segmentation_heads, deep_supervision)


# ---- the network the trainer builds -------------------------------------------------------------------------

def test_trainer_network_every_block_prenorm_is_cin_and_vitjoint_uses_layernorm(planned, nnunet_env):
    cvit, joint = build(make_trainer(TinyCViT, planned)), build(make_trainer(TinyViTJoint, planned))
    assert type(cvit) is ConditionalUNETR and type(joint) is ConditionalUNETR
    for net, norm in ((cvit, TokenConditionalInstanceNorm), (joint, nn.LayerNorm)):
        blocks = [m for m in net.modules() if isinstance(m, ViTBlock)]
        assert len(blocks) == Tiny.depth
        assert all(type(b.norm1) is norm and type(b.norm2) is norm for b in blocks)
    assert all(b.norm1.num_modalities == 2 for b in cvit.modules() if isinstance(b, ViTBlock))
    assert not cin_layers(joint)
    # same parameter names; shapes differ only where a CIN (modalities, C) faces a LayerNorm/InstanceNorm (C,)
    p_cvit, p_joint = dict(cvit.named_parameters()), dict(joint.named_parameters())
    assert p_cvit.keys() == p_joint.keys()
    cin_params = {f"{n}.{p}" for n, m in cvit.named_modules() if m in cin_layers(cvit) for p in ("weight", "bias")}
    differing = {k for k in p_cvit if p_cvit[k].shape != p_joint[k].shape}
    assert {f"encoder.vit.blocks.{i}.norm{j}.weight" for i in range(Tiny.depth) for j in (1, 2)} <= differing
    assert differing == cin_params
    assert all(p_cvit[k].shape == (2, *p_joint[k].shape) for k in differing)


def test_plans_record_the_unetr_and_its_hyper_parameters(planned, nnunet_env):
    trainer = make_trainer(TinyCViT, planned)
    cfg = trainer.plans_manager.plans["configurations"]["3d_fullres"]
    arch = cfg["architecture"]
    assert arch["network_class_name"] == UNETR_CLASS == "nnunet_cin.networks.ConditionalUNETR"
    assert arch["arch_kwargs"] == {
        "patch_size": cfg["patch_size"], "token_patch_size": [8, 8, 8], "hidden_size": 32, "depth": 3,
        "num_heads": 2, "mlp_ratio": 4.0, "feature_depths": None, "feature_size": 4, "num_modalities": 2,
        "norm": "cin", "qkv_bias": False, "dropout": 0.0, "attn_dropout": 0.0}
    assert trainer.plans_manager.plans["cin"]["modalities"] == ["CT", "MR"]
    json.dumps(trainer.plans_manager.plans)  # plans stay data (they become the model folder's plans.json)
    joint = make_trainer(TinyViTJoint, planned).configuration_manager.network_arch_init_kwargs
    assert joint["norm"] == "layernorm"
    # defaults: UNETR-Base
    defaults = make_trainer(nnUNetTrainerCViT, planned).configuration_manager.network_arch_init_kwargs
    assert (defaults["token_patch_size"], defaults["hidden_size"], defaults["depth"], defaults["num_heads"],
            defaults["mlp_ratio"], defaults["feature_size"]) == ([16] * 3, 768, 12, 12, 4.0, 16)
    # the preprocessed plans on disk are left alone
    assert planned.plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] != UNETR_CLASS


@pytest.mark.parametrize("configuration,planned_patch,expected", [
    ("3d_fullres", (20, 28, 36), [24, 32, 40]),  # token 8: every side rounded up to a multiple
    ("3d_fullres", (5, 16, 17), [8, 16, 24]),
    ("2d", (30, 44), [32, 48]),
])
def test_non_multiple_patch_sizes_are_rounded_up(planned, nnunet_env, configuration, planned_patch, expected):
    trainer = make_trainer(TinyCViT, planned, configuration, planned_patch)
    assert trainer.configuration_manager.patch_size == expected
    assert trainer.configuration_manager.network_arch_init_kwargs["patch_size"] == expected
    net = build(trainer).eval()
    x = torch.randn(2, 1, *expected)
    with torch.no_grad(), condition(net, torch.tensor([0, 1])):
        outputs = net(x)
    # deep supervision: one output per decoder stage, at the scales the trainer hands nnU-Net's loss/transforms
    scales = trainer._get_deep_supervision_scales()
    assert len(outputs) == len(scales) == 3
    for out, scale in zip(outputs, scales):
        assert list(out.shape[2:]) == [round(s * f) for s, f in zip(expected, scale)]
        assert out.shape[:2] == (2, 8)
    assert scales[0] == [1.0] * len(expected)
    trainer.enable_deep_supervision = False
    assert trainer._get_deep_supervision_scales() is None


def test_anisotropic_token_patch(planned, nnunet_env):
    class Aniso(TinyCViT):
        token_patch_size = (4, 8, 8)

    trainer = make_trainer(Aniso, planned, patch_size=(10, 20, 20))
    assert trainer.configuration_manager.patch_size == [12, 24, 24]
    assert trainer._get_deep_supervision_scales() == [[1.0, 1.0, 1.0], [1.0, 0.5, 0.5], [0.5, 0.25, 0.25]]
    net = build(trainer)
    with torch.no_grad(), condition(net, 0):
        shapes = [tuple(o.shape[2:]) for o in net(torch.randn(1, 1, 12, 24, 24))]
    assert shapes == [(12, 24, 24), (12, 12, 12), (6, 6, 6)]


def test_build_network_architecture_from_the_datasets_plans(planned, nnunet_env):
    """The trainer's network from the dataset's plans (no trainer instance): what the trainer itself builds, and what
    nnU-Net's predictor builds from the model folder's plans.json."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_cin.plans import CINPlansError

    pm = PlansManager(deepcopy(planned.plans))
    assert pm.get_configuration("3d_fullres").network_arch_class_name != UNETR_CLASS  # a conv U-Net in the plans
    for cls in (TinyCViT, TinyViTJoint):
        trainer = make_trainer(cls, planned)
        expected = {k: v.shape for k, v in build(trainer).state_dict().items()}
        from_dataset = cls.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 8)
        assert type(from_dataset) is ConditionalUNETR
        assert {k: v.shape for k, v in from_dataset.state_dict().items()} == expected
        model_pm = PlansManager(trainer.plans_manager.plans)  # the model folder's plans.json
        from_model = cls.build_network_architecture(model_pm, model_pm.get_configuration("3d_fullres"), 1, 8)
        from_model.load_state_dict(from_dataset.state_dict())
        assert cls.plans_for_training(trainer.plans_manager.plans, "3d_fullres", None) == trainer.plans_manager.plans
    plain = deepcopy(planned.plans)
    del plain["cin"]  # plain nnU-Net plans do not say how many modalities the CIN layers need
    pm = PlansManager(plain)
    with pytest.raises(CINPlansError, match="record no modalities"):
        nnUNetTrainerCViT.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 8)


# ---- optimizer and warm-up ----------------------------------------------------------------------------------

def lrs(scheduler, epochs):
    """The lr nnU-Net trains each epoch with (on_train_epoch_start: lr_scheduler.step(current_epoch))."""
    out = []
    for e in range(epochs):
        scheduler.step(e)
        out.append(scheduler.optimizer.param_groups[0]["lr"])
    return out


def test_adamw_with_linear_warmup_then_poly(planned, nnunet_env):
    trainer = make_trainer(TinyCViT, planned)
    trainer.network = build(trainer)
    trainer.num_epochs = 1000
    optimizer, scheduler = trainer.configure_optimizers()
    assert type(optimizer) is torch.optim.AdamW
    group = optimizer.param_groups[0]
    assert group["weight_decay"] == 1e-5 and trainer.initial_lr == 1e-4
    assert sum(p.numel() for p in group["params"]) == sum(p.numel() for p in trainer.network.parameters())
    lr = lrs(scheduler, 1000)
    # 50 warm-up epochs: 1e-4 * (e + 1) / 50, then 1e-4 * (1 - (e - 50) / 950) ** 0.9
    assert lr[0] == pytest.approx(2e-6) and lr[9] == pytest.approx(2e-5) and lr[49] == pytest.approx(1e-4)
    assert lr[50] == pytest.approx(1e-4)
    assert lr[525] == pytest.approx(1e-4 * 0.5 ** 0.9)
    assert lr[999] == pytest.approx(1e-4 * (1 / 950) ** 0.9)
    assert all(a < b for a, b in zip(lr[:49], lr[1:50])) and all(a > b for a, b in zip(lr[50:-1], lr[51:]))


def test_warmup_is_capped_for_short_schedules_and_cosine_option(planned, nnunet_env):
    from nnunet_cin.training.training_length import nnUNetTrainerCViT_5epochs, nnUNetTrainerCViT_100epochs

    five = make_trainer(type("T5", (Tiny, nnUNetTrainerCViT_5epochs), {}), planned)
    assert five.num_epochs == 5 and five.effective_warmup_epochs() == 0
    five.network = build(five)
    _, scheduler = five.configure_optimizers()
    # no warm-up: exactly nnU-Net's PolyLRScheduler
    reference = PolyLRScheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-4), 1e-4, 5)
    assert lrs(scheduler, 5) == pytest.approx(lrs(reference, 5)) and lrs(scheduler, 1) == [1e-4]

    class Cosine(Tiny, nnUNetTrainerCViT_100epochs):
        lr_decay = "cosine"

    hundred = make_trainer(Cosine, planned)
    hundred.network = build(hundred)
    assert hundred.effective_warmup_epochs() == 10  # a tenth of the schedule (< 50)
    lr = lrs(hundred.configure_optimizers()[1], 100)
    assert lr[0] == pytest.approx(1e-5) and lr[4] == pytest.approx(5e-5) and lr[9] == pytest.approx(1e-4)
    assert lr[10] == pytest.approx(1e-4) and lr[55] == pytest.approx(5e-5)  # half-way: half the rate
    assert lr[99] == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))


def test_scheduler_argument_errors():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupPolyLRScheduler(opt, 1.0, 10, warmup_steps=10)
    with pytest.raises(ValueError, match="decay"):
        WarmupPolyLRScheduler(opt, 1.0, 10, decay="linear")


# ---- end to end -----------------------------------------------------------------------------------------------

TINY_TRAINER = '''
import torch
from nnunet_cin.training.transformer_trainers import nnUNetTrainerCViT


class nnUNetTrainerCViTTiny(nnUNetTrainerCViT):
    """A user's own variant: tiny ViT, token patch 16 (the planned 24^3 patch becomes 32^3), one epoch of two
    steps, no test-time mirroring (as nnU-Net's nnUNetTrainer_noMirroring) to keep CPU time low."""
    hidden_size, depth, num_heads, feature_size = 32, 4, 2, 4

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


class nnUNetTrainerViTJointTiny(nnUNetTrainerCViTTiny):
    """Its unconditioned counterpart (LayerNorm in the transformer): the pretrained weights of the test."""
    conditioned = False
'''


def test_train_and_predict_through_the_real_commands(planned, nnunet_env, tmp_path):
    # trained from the weights of its unconditioned counterpart (nnunet-cin convert-pretrained, -pretrained_weights)
    model, ckpt, saved, env = train_user_trainer(planned, nnunet_env, tmp_path, DATASET, "nnUNetTrainerCViTTiny",
                                                 TINY_TRAINER, pretrained_from="nnUNetTrainerViTJointTiny")
    assert checkpoint_modalities(ckpt) == ["CT", "MR"] and ckpt["current_epoch"] == 1
    log = "".join(p.read_text() for p in (model / "fold_0").glob("training_log_*.txt"))
    assert "AdamW, lr 0.0001, weight decay 1e-05; 0 warm-up epochs, then poly decay to epoch 1" in log
    assert any(k.endswith("blocks.3.norm2.weight") and v.shape == (2, 32) for k, v in ckpt["network_weights"].items())
    planned_patch = planned.plans["configurations"]["3d_fullres"]["patch_size"]
    assert any(p % 16 for p in planned_patch)  # not a multiple of the token patch: the trainer rounds it up
    assert saved["patch_size"] == [-(-p // 16) * 16 for p in planned_patch]
    assert saved["architecture"]["network_class_name"] == UNETR_CLASS
    assert saved["architecture"]["arch_kwargs"]["hidden_size"] == 32
    summary = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())
    assert "foreground_mean" in summary

    # the model folder alone describes the network: nnU-Net's get_network_from_plans on its plans.json rebuilds it
    # and the checkpoint loads strictly (what nnU-Net's predictor does)
    net = get_network_from_plans(UNETR_CLASS, saved["architecture"]["arch_kwargs"], [], 1, 8, deep_supervision=False)
    net.load_state_dict(ckpt["network_weights"])
    assert len(cin_layers(net)) > 0

    predict_test_cases(planned, nnunet_env, tmp_path, DATASET, "nnUNetTrainerCViTTiny", env)
    nnunets_predict_refuses(planned, nnunet_env, tmp_path, DATASET, "nnUNetTrainerCViTTiny", env)
