import math

import pytest
import torch
import torch.nn.functional as F
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_cin import ConditionalInstanceNorm1d, condition
from nnunet_cin.cin import cin_layers
from nnunet_cin.networks.unet import num_modalities_of
from nnunet_cin.networks.blocks import adjust_patch_size, deep_supervision_scales
from nnunet_cin.networks.unetr import ConditionalUNETR, stage_strides
from nnunet_cin.networks.vit import ViTBlock

# tiny sizes: hidden 32, depth 4, heads 2, token patch 8, patches 32^3 (3D) / 32^2 (2D)
TINY = dict(token_patch_size=8, hidden_size=32, depth=4, num_heads=2, feature_size=4, num_modalities=2)
PATCH = {2: (32, 32), 3: (32, 32, 32)}


def tiny(dim=3, norm="cin", patch_size=None, **kwargs):
    torch.manual_seed(0)
    net = ConditionalUNETR(1, 3, patch_size or PATCH[dim], norm=norm, **{**TINY, **kwargs})
    net.apply(net.initialize)
    return net


def randomise_cin(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in cin_layers(net):
            layer.weight.copy_(torch.rand(layer.weight.shape, generator=g) + 0.5)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))


def run(net, x, modality):
    with condition(net, modality):
        return net(x)


# ---- structure -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm,expected", [("cin", ConditionalInstanceNorm1d), ("layernorm", nn.LayerNorm)])
def test_every_block_prenorm_is_cin_or_layernorm(norm, expected):
    net = tiny(norm=norm)
    blocks = [m for m in net.modules() if isinstance(m, ViTBlock)]
    assert len(blocks) == TINY["depth"]
    for b in blocks:
        assert isinstance(b.norm1, expected) and isinstance(b.norm2, expected)
    assert isinstance(net.encoder.vit.norm, expected)
    # conv blocks: CIN on the encoder side only in "cin" mode, plain InstanceNorm in the decoder always
    decoder_norms = [m for m in net.decoder.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert decoder_norms and not cin_layers(net.decoder)
    conv_cin = [m for m in cin_layers(net.encoder) if not isinstance(m, ConditionalInstanceNorm1d)]
    conv_in = [m for m in net.encoder.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert (len(conv_cin) > 0 and not conv_in) if norm == "cin" else (not conv_cin and len(conv_in) > 0)
    if norm == "cin":
        assert num_modalities_of(net) == 2


def test_reference_has_the_same_weights_apart_from_the_norms():
    nets = {norm: tiny(norm=norm) for norm in ("cin", "layernorm")}
    shapes = {norm: {k: v.shape for k, v in net.state_dict().items()} for norm, net in nets.items()}
    assert shapes["cin"].keys() == shapes["layernorm"].keys()
    differing = {k for k in shapes["cin"] if shapes["cin"][k] != shapes["layernorm"][k]}
    norms = (ConditionalInstanceNorm1d, nn.LayerNorm, nn.InstanceNorm3d, *map(type, cin_layers(nets["cin"])))
    norm_params = {f"{name}.{p}" for net in nets.values() for name, m in net.named_modules(remove_duplicate=False)
                   if isinstance(m, norms) for p in ("weight", "bias")}
    assert differing and differing <= norm_params  # CIN keeps one row per modality


def test_hyper_parameter_errors():
    with pytest.raises(ValueError, match="norm"):
        tiny(norm="batchnorm")
    with pytest.raises(ValueError, match="feature_depths"):
        tiny(feature_depths=(1, 4))  # token 8 -> 3 decoder stages need 3 hidden states
    with pytest.raises(ValueError, match="powers of two"):
        tiny(token_patch_size=6)
    with pytest.raises(ValueError, match="divisible"):
        tiny(num_heads=3)


# ---- conditioning ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [2, 3])
def test_outputs_follow_the_modality(dim):
    net = tiny(dim).eval()
    x = torch.randn(2, 1, *PATCH[dim])
    with torch.no_grad():
        # defaults (all rows 1/0): both modalities compute the same thing
        torch.testing.assert_close(run(net, x, 0), run(net, x, 1))
        randomise_cin(net)
        out0, out1 = run(net, x, 0), run(net, x, 1)
        assert (out0 - out1).abs().max() > 1e-3
        # a mixed batch conditions each sample on its own modality
        mixed = run(net, x, torch.tensor([1, 0]))
        torch.testing.assert_close(mixed[0], out1[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mixed[1], out0[1], atol=1e-5, rtol=1e-4)
        # equal rows -> identical outputs, whatever the row values
        for layer in cin_layers(net):
            layer.weight[1] = layer.weight[0]
            layer.bias[1] = layer.bias[0]
        torch.testing.assert_close(run(net, x, 1), out0)


def test_cin_network_needs_a_modality_reference_does_not():
    x = torch.randn(1, 1, 32, 32, 32)
    with pytest.raises(RuntimeError, match="without a modality"):
        tiny()(x)
    assert tiny(norm="layernorm")(x).shape == (1, 3, 32, 32, 32)


# ---- the block against plain torch ---------------------------------------------------------------------------

def reference_block(block: ViTBlock, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """The pre-norm transformer block written out with plain tensor ops in float64."""
    p = {k: v.double() for k, v in block.state_dict().items()}
    x = x.double()
    b, n, c = x.shape
    heads = block.attn.num_heads

    def norm(t, name):
        if isinstance(getattr(block, name), nn.LayerNorm):  # over the channels of each token
            mean = t.mean(-1, keepdim=True)
            var = ((t - mean) ** 2).mean(-1, keepdim=True)
            return (t - mean) / torch.sqrt(var + 1e-5) * p[f"{name}.weight"] + p[f"{name}.bias"]
        mean = t.mean(1, keepdim=True)  # CIN: each channel over the tokens of its sample
        var = ((t - mean) ** 2).mean(1, keepdim=True)
        w, bias = p[f"{name}.weight"][modality][:, None, :], p[f"{name}.bias"][modality][:, None, :]
        return (t - mean) / torch.sqrt(var + 1e-5) * w + bias

    def linear(t, name):
        out = t @ p[f"{name}.weight"].T
        return out + p[f"{name}.bias"] if f"{name}.bias" in p else out

    q, k, v = (z.reshape(b, n, heads, c // heads).transpose(1, 2) for z in linear(norm(x, "norm1"), "attn.qkv")
               .split(c, dim=-1))
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1) @ v
    x = x + linear(attn.transpose(1, 2).reshape(b, n, c), "attn.proj")
    hidden = linear(norm(x, "norm2"), "mlp.fc1")
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    return x + linear(hidden, "mlp.fc2")


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("norm,randomised", [("cin", False), ("cin", True), ("layernorm", False)])
def test_every_block_matches_the_reference_computation(dim, norm, randomised):
    net = tiny(dim, norm=norm).eval()
    if randomised:
        randomise_cin(net)
    else:
        assert all(bool((layer.weight == 1).all() and (layer.bias == 0).all()) for layer in cin_layers(net))
    seen = []
    hooks = [b.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0], out)))
             for b in net.encoder.vit.blocks]
    modality = torch.tensor([1, 0, 1])
    with torch.no_grad():
        run(net, torch.randn(3, 1, *PATCH[dim]), modality)
    for h in hooks:
        h.remove()
    assert len(seen) == TINY["depth"]
    for block, inp, out in seen:  # layer-wise: each block from the input it actually received
        assert inp.shape == (3, 4 ** dim, 32)
        torch.testing.assert_close(out.double(), reference_block(block, inp, modality), atol=2e-5, rtol=1e-4)


# ---- sizes, nnU-Net plumbing ---------------------------------------------------------------------------------

def test_adjust_patch_size_and_strides():
    assert adjust_patch_size([80, 190, 161], 16) == [80, 192, 176]
    assert adjust_patch_size((30, 33), (8, 16)) == [32, 48]
    assert adjust_patch_size((16, 12, 16), 16) == [16, 16, 32]  # never a single token (CIN needs statistics)
    assert stage_strides((16, 16, 16)) == [(2, 2, 2)] * 4
    assert stage_strides((4, 16, 16)) == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert deep_supervision_scales(stage_strides((8, 8))) == [[1.0, 1.0], [0.5, 0.5], [0.25, 0.25]]
    assert deep_supervision_scales(stage_strides((4, 8))) == [[1.0, 1.0], [1.0, 0.5], [0.5, 0.25]]


@pytest.mark.parametrize("dim,size", [(3, (30, 27, 33)), (2, (37, 25))])
def test_non_multiple_sizes_are_padded_and_cropped(dim, size):
    net = tiny(dim, patch_size=size).eval()  # the plans' patch size itself need not be a multiple
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        out = run(net, x, 0)
        assert out.shape == (2, 3, *size)
        padded = F.pad(x, [v for s in reversed(size) for v in (0, (-s) % 8)])
        torch.testing.assert_close(out, run(net, padded, 0)[(..., *(slice(0, s) for s in size))])
        net.decoder.deep_supervision = True
        outs = run(net, x, 0)
    assert [o.shape[2:] for o in outs] == [tuple(math.ceil(s * f) for s, f in zip(size, scale))
                                           for scale in deep_supervision_scales(stage_strides((8,) * dim))]


def test_built_by_get_network_from_plans_with_deep_supervision_toggle():
    kwargs = dict(patch_size=[32, 32, 32], **TINY, norm="cin")
    net = get_network_from_plans("nnunet_cin.networks.unetr.ConditionalUNETR", kwargs, [], 1, 4, allow_init=True,
                                 deep_supervision=True)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        outs = run(net, x, 1)
        assert [tuple(o.shape) for o in outs] == [(1, 4, 32, 32, 32), (1, 4, 16, 16, 16), (1, 4, 8, 8, 8)]
        net.decoder.deep_supervision = False  # what nnUNetTrainer.set_deep_supervision_enabled does
        torch.testing.assert_close(run(net, x, 1), outs[0])
    # a model trained with deep supervision loads into one built without (nnU-Net's predictor)
    plain = get_network_from_plans("nnunet_cin.networks.unetr.ConditionalUNETR", kwargs, [], 1, 4, deep_supervision=False)
    plain.load_state_dict(net.state_dict())


@pytest.mark.parametrize("norm", ["cin", "layernorm"])
def test_gradients_reach_every_parameter_and_only_used_modality_rows(norm):
    net = tiny(norm=norm, deep_supervision=True)
    randomise_cin(net)
    outs = run(net, torch.randn(2, 1, 32, 32, 32), torch.tensor([0, 0]))
    sum(o.square().mean() for o in outs).backward()
    missing = [k for k, p in net.named_parameters() if p.grad is None]
    assert not missing  # DDP needs no find_unused_parameters
    for layer in cin_layers(net):
        for p in (layer.weight, layer.bias):
            assert p.grad[0].abs().sum() > 0 and torch.all(p.grad[1] == 0)
