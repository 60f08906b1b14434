"""Forward+backward cost of ConditionalInstanceNorm3d against nn.InstanceNorm3d(affine=True) (the plain layer it
replaces) and against a naive per-sample Python loop, at nnU-Net-like feature map sizes. Ratios come from the same run.

    python benchmarks/bench_cin.py [--device cuda] [--repeats 20]
"""
import argparse
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


def time_fwd_bwd(layer, x, call, repeats, device):
    for _ in range(3):
        call(layer, x).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        call(layer, x).square().mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    # (batch, channels, spatial): nnU-Net 3d_fullres first stage and a deeper stage, at CPU-friendly sizes
    shapes = [(2, 32, (64, 64, 64)), (8, 32, (32, 32, 32)), (2, 128, (16, 16, 16)), (8, 128, (16, 16, 16))]
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.repeats} repeats, 2 modalities, mixed batches\n")
    print("| batch | channels | spatial | InstanceNorm3d (ms) | CIN (ms) | per-sample loop (ms) | CIN / IN | loop / IN |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for b, c, spatial in shapes:
        x = torch.randn(b, c, *spatial, device=device, requires_grad=True)
        modality = torch.arange(b, device=device) % 2
        plain = nn.InstanceNorm3d(c, affine=True).to(device)
        cin = ConditionalInstanceNorm3d(c, 2).to(device)
        loop = PerSampleLoop(c, 2).to(device)
        t_in = time_fwd_bwd(plain, x, lambda layer, v: layer(v), args.repeats, device)
        t_cin = time_fwd_bwd(cin, x, lambda layer, v: layer(v, modality), args.repeats, device)
        t_loop = time_fwd_bwd(loop, x, lambda layer, v: layer(v, modality), args.repeats, device)
        print(f"| {b} | {c} | {'x'.join(map(str, spatial))} | {t_in:.2f} | {t_cin:.2f} | {t_loop:.2f} | "
              f"{t_cin / t_in:.3f} | {t_loop / t_in:.3f} |")


if __name__ == "__main__":
    main()
