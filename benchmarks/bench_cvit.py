"""C-ViT UNETR vs its LayerNorm reference at the same size: parameters and forward+backward time.

    python benchmarks/bench_cvit.py [--device cpu|cuda] [--patch 64] [--token 8] [--hidden 192] [--depth 6] ...

Times the whole network and the ViT encoder alone (where all of the CIN-vs-LayerNorm difference lies, next to
the CIN of the encoder-side conv blocks). Median of --repeats timed iterations after --warmup ones, the two
variants interleaved so that machine noise hits both alike.
"""
import argparse
import statistics
import time

import torch

from nnunet_cin import condition
from nnunet_cin.networks.unetr import ConditionalUNETR


def build(norm, args):
    torch.manual_seed(0)
    net = ConditionalUNETR(1, args.classes, (args.patch,) * args.dim, args.token, args.hidden, args.depth,
                           args.heads, feature_size=args.feature_size, norm=norm, num_modalities=2)
    net.apply(net.initialize)
    return net.to(args.device)


def step_fn(module, x, modality, device):
    def step():
        module.zero_grad(set_to_none=True)
        with condition(module, modality):
            out = module(x)
        out = out[-1] if isinstance(out, list) else out
        out.float().square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
    return step


def time_pair(steps, warmup, repeats):
    times = {k: [] for k in steps}
    for _ in range(warmup):
        for s in steps.values():
            s()
    for _ in range(repeats):
        for k, s in steps.items():
            t = time.perf_counter()
            s()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dim", type=int, default=3)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--token", type=int, default=8)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--feature-size", type=int, default=16)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()

    nets = {norm: build(norm, args) for norm in ("cin", "layernorm")}
    x = torch.randn(args.batch, 1, *(args.patch,) * args.dim, device=args.device)
    modality = torch.arange(args.batch, device=args.device) % 2
    whole = time_pair({k: step_fn(n, x, modality, args.device) for k, n in nets.items()}, args.warmup, args.repeats)
    vit = time_pair({k: step_fn(n.encoder.vit, x, modality, args.device) for k, n in nets.items()},
                    args.warmup, args.repeats)

    params = {k: sum(q.numel() for q in n.parameters()) for k, n in nets.items()}
    tokens = (args.patch // args.token) ** args.dim
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}; input "
          f"{args.batch}x1x{'x'.join([str(args.patch)] * args.dim)}, token {args.token} ({tokens} tokens), hidden "
          f"{args.hidden}, depth {args.depth}, heads {args.heads}, feature size {args.feature_size}; median of "
          f"{args.repeats}")
    print(f"| {'':28} | {'C-ViT (cin)':>12} | {'LayerNorm ref':>13} | {'ratio':>6} |")
    print(f"|{'-' * 30}|{'-' * 13}:|{'-' * 14}:|{'-' * 7}:|")
    rows = [("parameters", params["cin"], params["layernorm"], "{:,}"),
            ("UNETR fwd+bwd (ms)", whole["cin"] * 1e3, whole["layernorm"] * 1e3, "{:.1f}"),
            ("ViT encoder fwd+bwd (ms)", vit["cin"] * 1e3, vit["layernorm"] * 1e3, "{:.1f}")]
    for name, a, b, fmt in rows:
        print(f"| {name:28} | {fmt.format(a):>12} | {fmt.format(b):>13} | {a / b:6.3f} |")


if __name__ == "__main__":
    main()
