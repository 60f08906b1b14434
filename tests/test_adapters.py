"""Modality-specific capacity (nnunet_cin.networks.adapters, and CIN rows in the decoder): the modalities that do not
use it compute bitwise what they computed without it (-0.0 included), every modality's parameters take part in every
training step (DDP without find_unused_parameters), the plans carry it, and add-modality's weight surgery trains the
new modality's part only."""
import pytest
import torch
from torch import nn

from nnunet_cin.cin import ConditionalInstanceNorm3d, condition
from nnunet_cin.networks.adapters import AdaptedInstanceNorm, adapter_parameters
from nnunet_cin.networks.unet import ConditionalPlainConvUNet, conditional_architecture

UNET = dict(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d, kernel_sizes=3,
            strides=[1, 2, 2], n_conv_per_stage=2, num_classes=3, n_conv_per_stage_decoder=1, conv_bias=True,
            norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
            nonlin_kwargs={"inplace": True}, deep_supervision=False)


def _randomize(layer: nn.Module, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


def test_adapted_norm_is_cin_for_the_other_modalities_bitwise_and_y_plus_w_y_for_its_own():
    cin = ConditionalInstanceNorm3d(4, 3)
    _randomize(cin)
    adapted = AdaptedInstanceNorm(4, 3, adapted=[2])
    adapted.load_state_dict(cin.state_dict() | {"adapter": torch.randn(1, 4, 4)})
    with torch.no_grad():  # modality 0's row gives exactly -0.0 wherever the normalized value is positive
        for layer in (cin, adapted):
            layer.weight[0] = -0.0
            layer.bias[0] = -0.0
    x = torch.randn(3, 4, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    m = torch.tensor([0, 1, 2])
    with torch.no_grad():
        reference, out = cin(x, m), adapted(x, m)
    assert torch.signbit(reference[0]).any() and (reference[0] == 0).all()
    for i in (0, 1):  # bitwise, the sign of zero included (y + 0.0 would turn -0.0 into +0.0)
        assert out[i].numpy().tobytes() == reference[i].numpy().tobytes()
    # the adapted sample: y + W y with y its CIN output (an independent einsum)
    y = reference[2]
    expected = y + torch.einsum("ij,jxyz->ixyz", adapted.adapter[0].detach(), y)
    assert torch.allclose(out[2], expected, atol=1e-5) and not torch.allclose(out[2], y)
    # one modality given as an int (prediction): the same values
    with torch.no_grad():
        assert torch.equal(adapted(x[:1], 0), reference[:1]) and torch.allclose(adapted(x[2:], 2), out[2:])


def test_every_adapter_takes_part_in_every_step():
    layer = AdaptedInstanceNorm(4, 3, adapted=[1, 2])
    x = torch.randn(2, 4, 3, 3, 3)
    layer(x, torch.tensor([0, 0])).square().sum().backward()  # no sample uses an adapter
    assert layer.adapter.grad is not None and torch.equal(layer.adapter.grad, torch.zeros_like(layer.adapter))
    layer.adapter.grad = None
    layer(x, torch.tensor([0, 2])).square().sum().backward()
    assert layer.adapter.grad[0].abs().sum() == 0 and layer.adapter.grad[1].abs().sum() > 0


def test_adapted_norm_refuses_bad_modality_lists():
    for bad in ([], [3], [1, 1], [-1]):
        with pytest.raises(ValueError, match="adapted"):
            AdaptedInstanceNorm(4, 3, adapted=bad)


def _unet(**kwargs):
    torch.manual_seed(0)
    return ConditionalPlainConvUNet(**UNET, **kwargs)


def test_decoder_rows_and_adapters_leave_the_old_modalities_bitwise():
    """A CT+MR U-Net (CIN in the encoder) and the same weights in a network that gives a third modality rows in
    every norm and adapters (add-modality's --adapt adapters, adapters trained to anything): CT and MR logits equal
    bit for bit, alone and in a batch with the third modality; the third one computes something else."""
    from nnunet_cin.add_modality.rows import extended_state_dict
    base = _unet(num_modalities=2).eval()
    _randomize(base)
    extended = _unet(num_modalities=3, cin_scope="all", adapter_modalities=[2]).eval()
    extended.load_state_dict(extended_state_dict(base.state_dict(), extended, 1))
    layers = {id(m): m for m in extended.modules() if isinstance(m, AdaptedInstanceNorm)}.values()
    assert len(layers) == 2 * 3 + 2  # every norm: 2 per encoder stage, 1 per decoder stage
    with torch.no_grad():
        for layer in layers:
            layer.adapter.normal_()
    x = torch.randn(3, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for m in (0, 1, torch.tensor([1, 0, 0])):
            with condition(base, m):
                a = base(x)
            with condition(extended, m):
                b = extended(x)
            assert torch.equal(a, b)
        with condition(base, torch.tensor([0, 1])):
            a = base(x[:2])
        with condition(extended, torch.tensor([0, 1, 2])):
            b = extended(x)
        assert torch.equal(a, b[:2]) and not torch.allclose(b[2], a[1])


def test_plans_carry_the_adapters_and_the_trainer_variant_writes_them():
    from nnunet_cin.training.variants import nnUNetTrainerCINAdapters
    plain = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
             "arch_kwargs": {"n_stages": 3}, "_kw_requires_import": []}
    arch = conditional_architecture(plain, 3, "all", [2, 0])
    assert arch["arch_kwargs"]["adapter_modalities"] == [0, 2] and arch["arch_kwargs"]["num_modalities"] == 3
    assert conditional_architecture(arch, 3, "all")["arch_kwargs"]["adapter_modalities"] == [0, 2]  # kept
    assert "adapter_modalities" not in conditional_architecture(arch, 3, "all", [])["arch_kwargs"]
    with pytest.raises(ValueError, match="cin_scope 'all'"):
        conditional_architecture(plain, 3, "encoder", [1])
    with pytest.raises(ValueError, match="3 modalities"):
        conditional_architecture(plain, 3, "all", [3])
    configuration = {"architecture": plain}
    trained = nnUNetTrainerCINAdapters.configuration_for_training(configuration, ["CT", "MR"])["architecture"]
    assert trained["arch_kwargs"]["adapter_modalities"] == [0, 1] and trained["arch_kwargs"]["cin_scope"] == "all"
    # applied to its own output (a model folder's plans.json), or to plans listing other adapters: kept as they are
    again = nnUNetTrainerCINAdapters.configuration_for_training({"architecture": trained}, ["CT", "MR"])
    assert again["architecture"] == trained
    net = ConditionalPlainConvUNet(**UNET, **{k: v for k, v in trained["arch_kwargs"].items()
                                              if k in ("num_modalities", "cin_scope", "adapter_modalities")})
    # 2 modalities x (every norm's channels squared): encoder 4, 4, 8, 8, 16, 16; decoder 8, 4
    assert adapter_parameters(net) == 2 * sum(c * c for c in (4, 4, 8, 8, 16, 16, 8, 4))


def test_weight_surgery_trains_the_new_modality_only_and_the_check_sees_any_change():
    """extended_state_dict + attach_new_rows on --adapt adapters: SGD with momentum and weight decay over every
    parameter moves only T2's rows and adapters; unchanged_except_new_rows accepts that and names any other change
    (an old decoder row, an old encoder row, a shared conv)."""
    from nnunet_cin.add_modality.rows import (attach_new_rows, cin_tensor_names, detach_new_rows,
                                              extended_state_dict, unchanged_except_new_rows)
    base = _unet(num_modalities=2)
    _randomize(base)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    net = _unet(num_modalities=3, cin_scope="all", adapter_modalities=[2])
    net.load_state_dict(extended_state_dict(original, net, 1))
    trainable = attach_new_rows(net, original)
    layers = {id(m): m for m in net.modules() if isinstance(m, AdaptedInstanceNorm)}.values()
    assert sum(p.numel() for p in trainable) == sum(2 * m.num_features + m.num_features ** 2 for m in layers)
    optimizer = torch.optim.SGD(net.parameters(), 0.1, weight_decay=0.1, momentum=0.99, nesterov=True)
    x = torch.randn(3, 1, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    for _ in range(3):
        optimizer.zero_grad()
        with condition(net, torch.tensor([0, 1, 2])):
            net(x).square().mean().backward()
        optimizer.step()
    detach_new_rows(net)
    after = net.state_dict()
    keys = cin_tensor_names(net)
    assert unchanged_except_new_rows(original, after, keys) == []
    decoder_norm = next(k for k in keys if k.endswith("norm.weight") and original[k].dim() == 1)  # shared before
    encoder_norm = next(k for k in keys if k.endswith("norm.bias") and original[k].dim() == 2)
    adapter = next(k for k in keys if k.endswith(".adapter"))
    assert not torch.equal(after[decoder_norm][2], after[decoder_norm][0]) and after[adapter].abs().sum() > 0
    for key, row in ((decoder_norm, 1), (encoder_norm, 0)):
        broken = dict(after)
        broken[key] = after[key].clone()
        broken[key][row] += 1e-6
        assert unchanged_except_new_rows(original, broken, keys) == [key]
    conv = next(k for k in original if k.endswith("conv.weight"))
    assert unchanged_except_new_rows(original, after | {conv: after[conv] * 1.0001}, keys) == [conv]
    # a tensor the model did not have is only accepted as the new modality's capacity
    assert unchanged_except_new_rows(original, after | {"stray": torch.zeros(1)}, keys) == ["stray"]
