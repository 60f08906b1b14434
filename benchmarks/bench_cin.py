"""Forward+backward cost of ConditionalInstanceNorm3d against nn.InstanceNorm3d(affine=True) (the plain layer it
replaces) and against a naive per-sample Python loop, at nnU-Net-like feature map sizes. Ratios come from the same run.

    python benchmarks/bench_cin.py [--device cuda] [--repeats 20]
"""
import argparse
import statistics
import time

import torch
from torch import nn

from nnunet_cin import ConditionalInstanceNorm3d


class PerSampleLoop(nn.Module):
    """The hand-made alternative: one instance norm call per sample."""

    def __init__(self, num_features, num_modalities):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_modalities, num_features))
        self.bias = nn.Parameter(torch.zeros(num_modalities, num_features))

    def forward(self, x, modality):
        return torch.cat([nn.functional.instance_norm(x[i:i + 1], weight=self.weight[m], bias=self.bias[m], eps=1e-5)
                          for i, m in enumerate(modality.tolist())])


def _once(layer, x, call, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    call(layer, x).square().mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_fwd_bwd(variants, x, repeats, device):
    """Median forward+backward ms of each (layer, call) variant, measured interleaved (round robin) so that a noisy
    machine slows all variants alike."""
    for layer, call in variants:
        for _ in range(2):
            call(layer, x).sum().backward()
    samples = [[] for _ in variants]
    for _ in range(repeats):
        for i, (layer, call) in enumerate(variants):
            samples[i].append(_once(layer, x, call, device))
    return [statistics.median(s) * 1000 for s in samples]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    # the normalization layers of a 5-stage nnU-Net 3D encoder (features 32..320, patch 64^3), one stage per row,
    # at batch 2 and 8; the "encoder total" row sums the stages
    stages = [(32, 64), (64, 32), (128, 16), (256, 8), (320, 4)]
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats} interleaved repeats, 2 modalities, mixed batches\n")
    print("| batch | channels | spatial | InstanceNorm3d (ms) | CIN (ms) | per-sample loop (ms) | CIN / IN | loop / CIN |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for b in (2, 8):
        totals = [0.0, 0.0, 0.0]
        for c, side in stages:
            x = torch.randn(b, c, side, side, side, device=device, requires_grad=True)
            modality = torch.arange(b, device=device) % 2
            plain = nn.InstanceNorm3d(c, affine=True).to(device)
            cin = ConditionalInstanceNorm3d(c, 2).to(device)
            loop = PerSampleLoop(c, 2).to(device)
            times = time_fwd_bwd([(plain, lambda layer, v: layer(v)), (cin, lambda layer, v: layer(v, modality)),
                                  (loop, lambda layer, v: layer(v, modality))], x, args.repeats, device)
            totals = [t + u for t, u in zip(totals, times)]
            _row(b, c, f"{side}^3", *times)
        _row(b, "", "**encoder total**", *totals)


def _row(b, c, spatial, t_in, t_cin, t_loop):
    print(f"| {b} | {c} | {spatial} | {t_in:.2f} | {t_cin:.2f} | {t_loop:.2f} | {t_cin / t_in:.3f} | "
          f"{t_loop / t_cin:.2f} |")


if __name__ == "__main__":
    main()
