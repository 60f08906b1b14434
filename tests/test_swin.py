import math

import pytest
import torch
import torch.nn.functional as F
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_cin import condition
from nnunet_cin.cin import CIN_BY_DIM, cin_layers
from nnunet_cin.networks.unet import num_modalities_of
from nnunet_cin.networks.blocks import adjust_patch_size, deep_supervision_scales
from nnunet_cin.networks.swin import (ConditionalSwinUNETR, PatchMerging, SwinBlock, attention_mask, decoder_strides,
                                      patch_divisor)
from nnunet_cin.networks.vit import TokenConditionalInstanceNorm

# tiny sizes: F=8, 2 stages of 2 blocks, heads 2/4, window 4, token 2 -> sides multiples of 8
TINY = dict(token_patch_size=2, feature_size=8, depths=(2, 2), num_heads=(2, 4), window_size=4, num_modalities=2)
PATCH = {2: (16, 16), 3: (16, 16, 16)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: on a shared 2-core machine, OpenMP's thread hand-offs cost more than the work itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(dim=3, norm="cin", patch_size=None, **kwargs):
    torch.manual_seed(0)
    net = ConditionalSwinUNETR(1, 3, patch_size or PATCH[dim], norm=norm, **{**TINY, **kwargs})
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

@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("norm", ["cin", "layernorm"])
def test_cin_everywhere_the_method_puts_it(dim, norm):
    net = tiny(dim, norm=norm)
    token_norm = TokenConditionalInstanceNorm if norm == "cin" else nn.LayerNorm
    instance_norm = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dim]
    blocks = [m for m in net.modules() if isinstance(m, SwinBlock)]
    merges = [m for m in net.modules() if isinstance(m, PatchMerging)]
    assert len(blocks) == sum(TINY["depths"]) and len(merges) == len(TINY["depths"])
    assert [b.shift_size for b in blocks] == [(0,) * dim, (2,) * dim] * 2  # every second block shifted by W // 2
    for b in blocks:
        assert type(b.norm1) is token_norm and type(b.norm2) is token_norm
    for m in merges:
        assert type(m.norm) is token_norm and m.norm.weight.shape[-1] == 2 ** dim * m.reduction.out_features // 2
    swin = net.encoder.swin
    assert len(swin.output_norms) == len(TINY["depths"]) + 1
    assert all(type(n) is token_norm for n in swin.output_norms)
    token_norms = [m for m in swin.modules() if isinstance(m, (TokenConditionalInstanceNorm, nn.LayerNorm))]
    assert len(token_norms) == 2 * len(blocks) + len(merges) + len(swin.output_norms)  # no other norm in the Swin
    # encoder-side conv blocks: CIN (image stem, skips, bottleneck); decoder: plain InstanceNorm only
    conv_norms = [m for name, m in net.encoder.named_modules() if not name.startswith("swin")
                  and isinstance(m, (CIN_BY_DIM[dim], instance_norm))]
    expected_conv = CIN_BY_DIM[dim] if norm == "cin" else instance_norm
    assert conv_norms and all(type(m) is expected_conv for m in conv_norms)
    assert not cin_layers(net.decoder)
    assert [m for m in net.decoder.modules() if isinstance(m, instance_norm)]
    assert not [m for m in net.decoder.modules() if isinstance(m, nn.LayerNorm)]
    if norm == "cin":
        assert len(cin_layers(net)) == len(token_norms) + len(conv_norms) and num_modalities_of(net) == 2
    else:
        assert not cin_layers(net)


def test_reference_has_the_same_weights_apart_from_the_norms():
    nets = {norm: tiny(norm=norm) for norm in ("cin", "layernorm")}
    shapes = {norm: {k: v.shape for k, v in net.state_dict().items()} for norm, net in nets.items()}
    assert shapes["cin"].keys() == shapes["layernorm"].keys()
    differing = {k for k in shapes["cin"] if shapes["cin"][k] != shapes["layernorm"][k]}
    norms = (nn.LayerNorm, nn.InstanceNorm3d, *map(type, cin_layers(nets["cin"])))
    norm_params = {f"{name}.{p}" for net in nets.values() for name, m in net.named_modules(remove_duplicate=False)
                   if isinstance(m, norms) for p in ("weight", "bias")}
    assert differing and differing <= norm_params  # CIN keeps one row per modality


def test_hyper_parameter_errors():
    with pytest.raises(ValueError, match="norm"):
        tiny(norm="batchnorm")
    with pytest.raises(ValueError, match="divisible"):
        tiny(num_heads=(3, 4))
    with pytest.raises(ValueError, match="equal"):
        tiny(depths=(2, 2, 2))
    with pytest.raises(ValueError, match="even token grid"):
        PatchMerging(4, 2)(torch.zeros(1, 3, 4, 4))


# ---- conditioning ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [2, 3])
def test_outputs_follow_the_modality(dim):
    net = tiny(dim).eval()
    x = torch.randn(2, 1, *PATCH[dim])
    with torch.no_grad():
        torch.testing.assert_close(run(net, x, 0), run(net, x, 1))  # default rows (1/0): the same network
        randomise_cin(net)
        out0, out1 = run(net, x, 0), run(net, x, 1)
        assert (out0 - out1).abs().max() > 1e-3
        mixed = run(net, x, torch.tensor([1, 0]))  # each sample on its own modality
        torch.testing.assert_close(mixed[0], out1[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mixed[1], out0[1], atol=1e-5, rtol=1e-4)
        for layer in cin_layers(net):  # equal rows -> identical outputs, whatever the row values
            layer.weight[1] = layer.weight[0]
            layer.bias[1] = layer.bias[0]
        torch.testing.assert_close(run(net, x, 1), out0)


def test_cin_network_needs_a_modality_reference_does_not():
    x = torch.randn(1, 1, 16, 16)
    with pytest.raises(RuntimeError, match="without a modality"):
        tiny(2)(x)
    assert tiny(2, norm="layernorm")(x).shape == (1, 3, 16, 16)


# ---- Swin block against a plain full-attention computation -----------------------------------------------------

def window_groups(grid, window, shifted):
    """Independent definition of the windows: per axis, as in the Swin paper's figure, the regular partition
    floor(c / w), or the partition offset by s = w // 2: floor((c - s) / w), on the grid padded to whole windows;
    an axis no longer than the window is one window, never shifted. Returns (N, d) group ids of every token."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(g) for g in grid), indexing="ij"), -1).reshape(-1, len(grid))
    groups = []
    for axis, (g, w) in enumerate(zip(grid, window)):
        if g <= w:
            groups.append(torch.zeros(len(coords), dtype=torch.long))
        else:
            s = w // 2 if shifted else 0
            groups.append(torch.div(coords[:, axis] - s, w, rounding_mode="floor"))
    return coords, torch.stack(groups, -1)


def reference_block(block: SwinBlock, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """The block as full attention over all real tokens in float64: score + relative position bias of the offset,
    -inf between tokens of different windows; pre-norms CIN (over all tokens of a sample) or LayerNorm."""
    p = {k: v.double() for k, v in block.state_dict().items()}
    b, *grid, c = x.shape
    x = x.double().reshape(b, -1, c)
    n, heads, W = x.shape[1], block.attn.num_heads, block.window_size
    coords, groups = window_groups(grid, W, any(block.shift_size))
    allowed = (groups[:, None, :] == groups[None, :, :]).all(-1)  # (N, N) query, key
    rel = coords[:, None, :] - coords[None, :, :]
    index = torch.zeros(n, n, dtype=torch.long)
    for axis, w in enumerate(W):
        index = index * (2 * w - 1) + (rel[..., axis] + w - 1).clamp(0, 2 * w - 2)
    bias = p["attn.relative_position_bias_table"][index].permute(2, 0, 1)  # (heads, N, N)

    def norm(t, name):
        if isinstance(getattr(block, name), nn.LayerNorm):
            mean, var = t.mean(-1, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
            return (t - mean) / torch.sqrt(var + 1e-5) * p[f"{name}.weight"] + p[f"{name}.bias"]
        mean, var = t.mean(1, keepdim=True), t.var(1, unbiased=False, keepdim=True)
        w, bb = p[f"{name}.weight"][modality][:, None, :], p[f"{name}.bias"][modality][:, None, :]
        return (t - mean) / torch.sqrt(var + 1e-5) * w + bb

    def linear(t, name):
        out = t @ p[f"{name}.weight"].T
        return out + p[f"{name}.bias"] if f"{name}.bias" in p else out

    q, k, v = (z.reshape(b, n, heads, c // heads).transpose(1, 2) for z in linear(norm(x, "norm1"), "attn.qkv")
               .split(c, dim=-1))
    scores = (q @ k.transpose(-1, -2) / math.sqrt(c // heads) + bias).masked_fill(~allowed, float("-inf"))
    x = x + linear((torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(b, n, c), "attn.proj")
    hidden = linear(norm(x, "norm2"), "mlp.fc1")
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    return (x + linear(hidden, "mlp.fc2")).reshape(b, *grid, c)


# grids: multiples of the window, non-multiples (padded + masked), and axes smaller than the window (whole axis)
@pytest.mark.parametrize("grid,window", [((8, 8), (4, 4)), ((10, 7), (4, 4)), ((3, 9), (4, 4)),
                                         ((6, 5, 7), (4, 4, 4)), ((4, 9, 3), (2, 3, 4))])
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("norm", ["cin", "layernorm"])
def test_swin_block_matches_full_attention_reference(grid, window, shifted, norm):
    torch.manual_seed(0)
    block = SwinBlock(8, 2, window, shifted, norm=norm).eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()  # make the bias matter
        for layer in cin_layers(block):
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.normal_()
    x = torch.randn(3, *grid, 8)
    modality = torch.tensor([1, 0, 1])
    with torch.no_grad(), condition(block, modality) if norm == "cin" else torch.no_grad():
        out = block(x)
    torch.testing.assert_close(out.double(), reference_block(block, x, modality), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("grid,window", [((10, 7), (4, 4)), ((12, 8), (4, 4)), ((5, 7, 6), (4, 4, 4))])
@pytest.mark.parametrize("shifted", [False, True])
def test_attention_never_crosses_window_or_shift_region_boundaries(grid, window, shifted):
    """Perturb one token at a time: exactly the tokens of its own (shifted) window change, for every token."""
    torch.manual_seed(0)
    block = SwinBlock(4, 1, window, shifted).double().eval()
    n = math.prod(grid)
    base = torch.randn(1, *grid, 4, dtype=torch.float64)
    perturbed = base.repeat(n, *([1] * (len(grid) + 1))).reshape(n, n, 4)
    perturbed[torch.arange(n), torch.arange(n)] += 1.0
    with torch.no_grad():
        changed = (block.attend(perturbed.reshape(n, *grid, 4)) - block.attend(base)).reshape(n, n, 4)
    influenced = changed.abs().amax(-1) > 0  # [perturbed key, query]
    _, groups = window_groups(grid, window, shifted)
    same_window = (groups[:, None, :] == groups[None, :, :]).all(-1)
    assert torch.equal(influenced, same_window)
    if shifted and any(g > w for g, w in zip(grid, window)):
        assert not torch.equal(same_window, (window_groups(grid, window, False)[1][:, None] ==
                                             window_groups(grid, window, False)[1][None]).all(-1))


def test_attention_mask_needed_only_for_shift_or_padding():
    assert attention_mask((8, 8), (8, 8), (4, 4), (0, 0)) is None
    mask = attention_mask((8, 8), (8, 8), (4, 4), (2, 2))
    assert mask.shape == (4, 16, 16) and mask[0].all() and not mask[-1].all()
    padded = attention_mask((7, 8), (8, 8), (4, 4), (0, 0))
    assert padded[:2].all() and not padded[2:, :, 12:].any()  # last row of tokens of the lower windows is padding


# ---- sizes, nnU-Net plumbing ---------------------------------------------------------------------------------

def test_adjust_patch_size_and_scales():
    swin_unetr = patch_divisor(2, 4, 3)
    assert swin_unetr == (32, 32, 32)  # Swin-UNETR: multiples of 2 * 2^4
    assert adjust_patch_size([80, 190, 161], swin_unetr) == [96, 192, 192]
    assert adjust_patch_size((30, 33), patch_divisor((1, 2), 2, 2)) == [32, 40]
    assert adjust_patch_size([64, 96, 96], swin_unetr) == [64, 96, 96]
    assert adjust_patch_size([32, 32, 32], swin_unetr) == [32, 32, 64]  # never a single deepest token (CIN needs
    assert adjust_patch_size([20, 30, 12], swin_unetr) == [32, 64, 32]  # statistics): the longest axis grows
    assert adjust_patch_size((8, 8), patch_divisor(2, 2, 2)) == [8, 16]
    assert deep_supervision_scales(decoder_strides(2, 2, 2)) == [[1.0, 1.0], [0.5, 0.5], [0.25, 0.25]]
    assert deep_supervision_scales(decoder_strides((1, 2, 2), 4, 3))[1:3] == [[1.0, 0.5, 0.5], [0.5, 0.25, 0.25]]


@pytest.mark.parametrize("dim,size", [(3, (14, 9, 17)), (2, (37, 25))])
def test_awkward_plans_patch_sizes_are_padded_and_cropped(dim, size):
    net = tiny(dim, patch_size=size).eval()
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        out = run(net, x, 0)
        assert out.shape == (2, 3, *size)
        padded = F.pad(x, [v for s in reversed(size) for v in (0, (-s) % 8)])
        torch.testing.assert_close(out, run(net, padded, 0)[(..., *(slice(0, s) for s in size))])
        net.decoder.deep_supervision = True
        outs = run(net, x, 0)
    assert [o.shape[2:] for o in outs] == [tuple(math.ceil(s * f) for s, f in zip(size, scale))
                                           for scale in deep_supervision_scales(decoder_strides(2, 2, dim))]


def test_single_deepest_token_is_refused():
    with pytest.raises(ValueError, match="single token"):
        run(tiny(2), torch.randn(1, 1, 8, 5), 0)
    assert run(tiny(2), torch.randn(1, 1, 8, 9), 0).shape == (1, 3, 8, 9)


def test_anisotropic_token_patch():
    net = tiny(3, patch_size=(8, 16, 16), token_patch_size=(1, 2, 2), deep_supervision=True).eval()
    with torch.no_grad():
        outs = run(net, torch.randn(1, 1, 8, 16, 16), 1)
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 16, 16), (8, 8, 8), (4, 4, 4)]


def test_built_by_get_network_from_plans_with_deep_supervision_toggle():
    kwargs = dict(patch_size=[16, 16, 16], **TINY, norm="cin")
    net = get_network_from_plans("nnunet_cin.networks.swin.ConditionalSwinUNETR", kwargs, [], 1, 4, allow_init=True,
                                 deep_supervision=True)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        outs = run(net, x, 1)
        assert [tuple(o.shape) for o in outs] == [(1, 4, 16, 16, 16), (1, 4, 8, 8, 8), (1, 4, 4, 4, 4)]
        net.decoder.deep_supervision = False  # what nnUNetTrainer.set_deep_supervision_enabled does
        torch.testing.assert_close(run(net, x, 1), outs[0])
    plain = get_network_from_plans("nnunet_cin.networks.swin.ConditionalSwinUNETR", kwargs, [], 1, 4, deep_supervision=False)
    plain.load_state_dict(net.state_dict())


# ---- gradients, checkpointing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["cin", "layernorm"])
def test_gradients_reach_every_parameter_and_only_used_modality_rows(norm):
    net = tiny(norm=norm, deep_supervision=True)
    randomise_cin(net)
    outs = run(net, torch.randn(2, 1, 16, 16, 16), torch.tensor([0, 0]))
    sum(o.square().mean() for o in outs).backward()
    assert not [k for k, p in net.named_parameters() if p.grad is None]  # DDP needs no find_unused_parameters
    for layer in cin_layers(net):
        for p in (layer.weight, layer.bias):
            assert p.grad[0].abs().sum() > 0 and torch.all(p.grad[1] == 0)


def test_gradient_checkpointing_gives_the_same_gradients_even_with_backward_outside_condition():
    grads = {}
    x = torch.randn(2, 1, 16, 16)
    for ckpt in (False, True):
        net = tiny(2, use_checkpoint=ckpt, deep_supervision=True)
        randomise_cin(net)
        with condition(net, torch.tensor([1, 0])):
            loss = sum(o.square().mean() for o in net(x))
        loss.backward()  # the recomputation of checkpointed blocks runs here, outside the context
        grads[ckpt] = {k: p.grad for k, p in net.named_parameters()}
    assert grads[True].keys() == grads[False].keys()
    for k in grads[False]:
        torch.testing.assert_close(grads[True][k], grads[False][k], atol=1e-6, rtol=1e-5, msg=k)
