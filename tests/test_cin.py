import pytest
import torch
from torch import nn

from nnunet_cin import ConditionalInstanceNorm1d, ConditionalInstanceNorm2d, ConditionalInstanceNorm3d, condition

CIN_CLASSES = {1: ConditionalInstanceNorm1d, 2: ConditionalInstanceNorm2d, 3: ConditionalInstanceNorm3d}
SPATIAL = {1: (11,), 2: (7, 9), 3: (4, 5, 6)}


def reference_cin(x, weight, bias, modalities, eps):
    """Per-sample loop written from the definition: biased variance over the spatial axes of each channel."""
    outs = []
    for i, m in enumerate(modalities):
        xi = x[i].double()
        axes = tuple(range(1, xi.dim()))
        mean = xi.mean(dim=axes, keepdim=True)
        var = ((xi - mean) ** 2).mean(dim=axes, keepdim=True)
        shape = (-1,) + (1,) * (xi.dim() - 1)
        outs.append((xi - mean) / torch.sqrt(var + eps) * weight[m].double().view(shape)
                    + bias[m].double().view(shape))
    return torch.stack(outs).float()


def randomised(cin):
    with torch.no_grad():
        cin.weight.uniform_(0.5, 2.0)
        cin.bias.normal_()
    return cin


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_matches_per_sample_reference(dim, eps):
    torch.manual_seed(dim)
    cin = randomised(CIN_CLASSES[dim](num_features=5, num_modalities=3, eps=eps))
    x = torch.randn(4, 5, *SPATIAL[dim]) * 3 + 1.5
    modality = torch.tensor([2, 0, 2, 1])
    expected = reference_cin(x, cin.weight, cin.bias, modality.tolist(), eps)
    torch.testing.assert_close(cin(x, modality), expected, atol=1e-5, rtol=1e-5)
    # an int conditions the whole batch
    torch.testing.assert_close(cin(x, 1), reference_cin(x, cin.weight, cin.bias, [1] * 4, eps), atol=1e-5,
                               rtol=1e-5)


def test_initial_parameters_and_equivalence_to_instance_norm():
    cin = ConditionalInstanceNorm3d(6, 2)
    assert cin.weight.shape == (2, 6) and cin.bias.shape == (2, 6)
    assert torch.all(cin.weight == 1) and torch.all(cin.bias == 0)
    norm = nn.InstanceNorm3d(6, affine=True)
    x = torch.randn(3, 6, 4, 4, 4)
    torch.testing.assert_close(cin(x, torch.tensor([0, 1, 1])), norm(x))


def test_gradients_reach_only_the_rows_of_used_modalities():
    cin = randomised(ConditionalInstanceNorm2d(4, 3))
    x = torch.randn(3, 4, 6, 6, requires_grad=True)
    (cin(x, torch.tensor([0, 2, 0])) * torch.randn(3, 4, 6, 6)).sum().backward()
    for p in (cin.weight, cin.bias):
        assert p.grad is not None  # unused rows stay in the graph (DDP)
        assert torch.all(p.grad[1] == 0)
        assert torch.all(p.grad[0] != 0) and torch.all(p.grad[2] != 0)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_gradients_match_reference_autograd():
    torch.manual_seed(0)
    cin = randomised(ConditionalInstanceNorm3d(3, 2))
    x = torch.randn(4, 3, 3, 4, 5)
    modality = torch.tensor([1, 0, 1, 1])
    g = torch.randn(4, 3, 3, 4, 5)
    (cin(x, modality) * g).sum().backward()
    w = cin.weight.detach().clone().requires_grad_()
    b = cin.bias.detach().clone().requires_grad_()
    (reference_cin(x, w, b, modality.tolist(), cin.eps) * g).sum().backward()
    torch.testing.assert_close(cin.weight.grad, w.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cin.bias.grad, b.grad, atol=1e-4, rtol=1e-4)


class TwoNorms(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = randomised(ConditionalInstanceNorm1d(3, 2))
        self.norm2 = randomised(ConditionalInstanceNorm1d(3, 2))

    def forward(self, x):
        return self.norm2(self.norm1(x))


def test_condition_context_reaches_layers_called_without_modality():
    net = TwoNorms()
    x = torch.randn(2, 3, 8)
    modality = torch.tensor([1, 0])
    with condition(net, modality):
        y = net(x)
    torch.testing.assert_close(y, net.norm2(net.norm1(x, modality), modality))


def test_missing_modality_is_a_clear_error():
    net = TwoNorms()
    with pytest.raises(RuntimeError, match="without a modality.*condition.*nnUNetv2_predict_cin"):
        net(torch.randn(2, 3, 8))


def test_condition_nesting_and_exceptions_restore_previous_state():
    net = TwoNorms()
    x = torch.randn(2, 3, 8)
    with condition(net, 0):
        outer = net(x)
        with condition(net, 1):
            inner = net(x)
            with condition(net.norm1, 0):  # re-entrant on a sub-module
                mixed = net(x)
        torch.testing.assert_close(net(x), outer)
        with pytest.raises(KeyError):
            with condition(net, 1):
                raise KeyError("boom")
        torch.testing.assert_close(net(x), outer)
    assert net.norm1.context_modality is None and net.norm2.context_modality is None
    torch.testing.assert_close(inner, net.norm2(net.norm1(x, 1), 1))
    torch.testing.assert_close(mixed, net.norm2(net.norm1(x, 0), 1))
    assert not torch.allclose(outer, inner)


def test_explicit_modality_overrides_context():
    cin = randomised(ConditionalInstanceNorm1d(3, 2))
    x = torch.randn(2, 3, 5)
    with condition(cin, 0):
        torch.testing.assert_close(cin(x, 1), reference_cin(x, cin.weight, cin.bias, [1, 1], cin.eps),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("modality, error, message", [
    (2, ValueError, "out of range"),
    (-1, ValueError, "out of range"),
    (torch.tensor([0, 2]), ValueError, "out of range"),
    (torch.tensor([0, 1, 0]), ValueError, "shape"),
    (torch.tensor([[0, 1]]), ValueError, "shape"),
    (torch.tensor([0.0, 1.0]), TypeError, "integer dtype"),
    (torch.tensor([True, False]), TypeError, "integer dtype"),
    (1.0, TypeError, "int or an integer tensor"),
    ("CT", TypeError, "int or an integer tensor"),
])
def test_bad_modality_raises_clear_error(modality, error, message):
    cin = ConditionalInstanceNorm1d(3, 2)
    with pytest.raises(error, match=message):
        cin(torch.randn(2, 3, 5), modality)


def test_bad_modality_in_condition_fails_on_entry():
    net = TwoNorms()
    with pytest.raises(ValueError, match="out of range"):
        with condition(net, torch.tensor([0, 5])):
            pass
    with pytest.raises(TypeError, match="integer dtype"):
        with condition(net, torch.tensor([0.0])):
            pass
    assert net.norm1.context_modality is None
    with condition(net, torch.tensor([0, 1, 0])):  # batch size 3 against input batch 2: shape error at call
        with pytest.raises(ValueError, match="shape"):
            net(torch.randn(2, 3, 8))


def test_wrong_input_rank_is_a_clear_error():
    with pytest.raises(ValueError, match="expects a 5D input"):
        ConditionalInstanceNorm3d(3, 2)(torch.randn(2, 3, 4, 4), 0)


def test_autocast_bfloat16_on_cpu():
    cin = randomised(ConditionalInstanceNorm3d(4, 2))
    x = torch.randn(2, 4, 4, 4, 4)
    modality = torch.tensor([1, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = cin(x.bfloat16(), modality)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), cin(x, modality), atol=0.1, rtol=0.05)


def test_compiled_matches_eager_and_follows_the_context():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), randomised(ConditionalInstanceNorm3d(4, 2)), nn.LeakyReLU())
    compiled = torch.compile(net, backend="inductor")
    x = torch.randn(3, 2, 6, 6, 6)
    for modality in (torch.tensor([0, 1, 1]), torch.tensor([1, 0, 0]), torch.tensor([1, 1, 1])):
        with condition(net, modality):
            eager = net(x)
            comp = compiled(x)
        torch.testing.assert_close(comp, eager, atol=1e-4, rtol=1e-4)
