import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_cin import condition
from nnunet_cin.cin import cin_layers
from nnunet_cin.networks.unet import (ConditionalPlainConvUNet, ConditionalResidualEncoderUNet, conditional_architecture,
                                 make_conditional, num_modalities_of)

REQ_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def plans_architecture(dim: int, residual: bool) -> dict:
    """A plans `architecture` entry as nnU-Net's planners write it (ResEnc presets or the default planner)."""
    k = [3] * dim
    kwargs = dict(n_stages=3, features_per_stage=[4, 8, 16], conv_op=f"torch.nn.modules.conv.Conv{dim}d",
                  kernel_sizes=[k] * 3, strides=[[1] * dim, [2] * dim, [2] * dim], n_conv_per_stage_decoder=[1, 1],
                  conv_bias=True, norm_op=f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
                  norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
                  nonlin="torch.nn.LeakyReLU", nonlin_kwargs={"inplace": True})
    if residual:
        kwargs["n_blocks_per_stage"] = [1, 2, 2]
        cls = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    else:
        kwargs["n_conv_per_stage"] = [2, 2, 2]
        cls = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    return {"network_class_name": cls, "arch_kwargs": kwargs, "_kw_requires_import": REQ_IMPORT}


def build(arch: dict, deep_supervision=False):
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                  input_channels=1, output_channels=3, deep_supervision=deep_supervision)


def randomise_norm_affines(network):
    with torch.no_grad():
        for m in network.modules():
            if isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)


CASES = [(2, False), (3, False), (2, True), (3, True)]


@pytest.mark.parametrize("dim, residual", CASES)
def test_swap_keeps_outputs_identical_then_differs_per_modality(dim, residual):
    torch.manual_seed(0)
    plain = build(plans_architecture(dim, residual)).eval()
    randomise_norm_affines(plain)
    x = torch.randn(2, 1, *([16] * dim))
    with torch.no_grad():
        expected = plain(x)
    encoder_norms = sum(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in plain.encoder.modules())

    conditional = make_conditional(plain, num_modalities=2)
    assert len(cin_layers(conditional)) == encoder_norms > 0
    assert len(cin_layers(conditional.decoder.stages)) == 0  # decoder keeps shared instance norm
    with torch.no_grad():
        for modality in (0, 1, torch.tensor([1, 0])):
            with condition(conditional, modality):
                torch.testing.assert_close(conditional(x), expected, rtol=0, atol=0)

        for layer in cin_layers(conditional):
            layer.weight[1].mul_(1.5)
            layer.bias[1].add_(0.2)
        with condition(conditional, 0):
            torch.testing.assert_close(conditional(x), expected, rtol=0, atol=0)
        with condition(conditional, 1):
            assert not torch.allclose(conditional(x), expected, atol=1e-3)
        with condition(conditional, torch.tensor([0, 1])):
            mixed = conditional(x)
        torch.testing.assert_close(mixed[0], expected[0], rtol=0, atol=0)
        assert not torch.allclose(mixed[1], expected[1], atol=1e-3)


def test_every_reference_to_a_norm_is_swapped():
    net = make_conditional(build(plans_architecture(3, False)), 2)
    block = net.encoder.stages[0][0].convs[0]
    assert block.norm is block.all_modules[1]  # ConvDropoutNormReLU registers the norm twice (conv, norm, nonlin)
    assert net.decoder.encoder is net.encoder
    assert not any(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in net.encoder.modules())


def test_scope_all_conditions_decoder_too():
    net = make_conditional(build(plans_architecture(2, False)), 3, scope="all")
    assert not any(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in net.modules())
    assert num_modalities_of(net) == 3


def test_plain_checkpoint_becomes_conditional_starting_point():
    torch.manual_seed(1)
    arch = plans_architecture(3, True)
    trained = build(arch).eval()
    randomise_norm_affines(trained)
    checkpoint = {k: v.clone() for k, v in trained.state_dict().items()}
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = trained(x)

    fresh = build(arch).eval()
    fresh.load_state_dict(checkpoint)
    conditional = make_conditional(fresh, 2)
    for name, p in conditional.named_parameters():
        if name.endswith("norm.weight") and name.startswith("encoder"):
            assert p.shape[0] == 2
            torch.testing.assert_close(p[0], checkpoint[name])
            torch.testing.assert_close(p[1], checkpoint[name])
    with torch.no_grad(), condition(conditional, torch.tensor([1])):
        torch.testing.assert_close(conditional(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dim, residual", CASES)
def test_conditional_class_builds_from_plans(dim, residual):
    arch = conditional_architecture(plans_architecture(dim, residual), num_modalities=3)
    expected_cls = ConditionalResidualEncoderUNet if residual else ConditionalPlainConvUNet
    assert arch["network_class_name"] == f"nnunet_cin.networks.{expected_cls.__name__}"
    net = build(arch, deep_supervision=True)
    assert type(net) is expected_cls
    assert num_modalities_of(net) == 3
    # nnU-Net's initialisation must leave CIN rows identical across modalities (ResEnc zeroes some norms)
    for layer in cin_layers(net):
        assert torch.equal(layer.weight[0], layer.weight[2]) and torch.equal(layer.bias[0], layer.bias[1])
    x = torch.randn(2, 1, *([16] * dim))
    with condition(net, torch.tensor([2, 0])):
        outputs = net(x)
    assert [tuple(o.shape) for o in outputs][:2] == [(2, 3, *([16] * dim)), (2, 3, *([8] * dim))]


def test_conditional_architecture_rejects_unknown_class_and_scope():
    arch = plans_architecture(3, False)
    with pytest.raises(ValueError, match="no conditional counterpart"):
        conditional_architecture(dict(arch, network_class_name="my.pkg.FancyNet"), 2)
    with pytest.raises(ValueError, match="cin_scope"):
        conditional_architecture(arch, 2, cin_scope="decoder")
    # idempotent on conditional plans; short legacy names resolve
    once = conditional_architecture(arch, 2)
    assert conditional_architecture(once, 2) == once
    short = conditional_architecture(dict(arch, network_class_name="PlainConvUNet"), 2)
    assert short["network_class_name"] == once["network_class_name"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, result_queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        # deep supervision on, as nnU-Net trains: without it the lower seg heads are unused parameters
        net = build(conditional_architecture(plans_architecture(2, False), num_modalities=2), deep_supervision=True)
        ddp = nn.parallel.DistributedDataParallel(net)  # default find_unused_parameters=False
        # rank 0 sees only modality 0, rank 1 a mixed batch: DDP must still reduce every CIN row
        modality = torch.tensor([0, 0]) if rank == 0 else torch.tensor([0, 1])
        torch.manual_seed(rank + 1)
        x = torch.randn(2, 1, 16, 16)
        for _ in range(2):
            ddp.zero_grad()
            with condition(ddp, modality):
                loss = sum(o.square().mean() for o in ddp(x))
            loss.backward()
        # numpy pickles by value: a tensor would travel as a shared-memory handle that dies with this process
        result_queue.put((rank, cin_layers(net)[0].weight.grad.numpy().copy()))
    finally:
        dist.destroy_process_group()


def test_ddp_step_with_single_modality_batch_on_one_rank():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-7)  # all-reduced
    assert np.any(results[0][1] != 0)  # modality 1 rows learn from rank 1's sample
