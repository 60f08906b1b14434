"""C-Swin-UNETR vs its LayerNorm reference at the same size, with and without gradient checkpointing: parameters,
forward+backward time and peak memory.

    python benchmarks/bench_swin.py [--device cpu|cuda] [--dim 3] [--patch 64] [--feature-size 24] [--window 7] ...

Time: median of --repeats timed fwd+bwd steps after --warmup ones, the four variants interleaved so that machine
noise hits them alike. On cpu the time is the process's CPU time (time.process_time, summed over threads; use
--threads 1): on a shared, loaded machine wall time mostly measures the other processes. On cuda: wall time. Peak memory: the most memory held by tensors allocated during one fwd+bwd step (activations,
gradients, workspace; the parameters and the input, allocated before, not counted):
  cpu:  torch profiler (profile_memory=True), summing its individual allocation/free records in time order
        (tracemalloc does not see torch's CPU allocator); a separate, untimed step
  cuda: torch.cuda.max_memory_allocated() - memory_allocated() before the step
"""
import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from nnunet_cin import condition
from nnunet_cin.networks.swin import ConditionalSwinUNETR

VARIANTS = [("cin", False), ("layernorm", False), ("cin", True), ("layernorm", True)]


def build(norm, use_checkpoint, args):
    torch.manual_seed(0)
    net = ConditionalSwinUNETR(1, args.classes, (args.patch,) * args.dim, args.token, args.feature_size,
                               args.depths, args.heads, args.window, norm=norm, num_modalities=2,
                               use_checkpoint=use_checkpoint, deep_supervision=True)
    net.apply(net.initialize)
    return net.to(args.device)


def step_fn(net, x, modality, device):
    def step():
        net.zero_grad(set_to_none=True)
        with condition(net, modality):
            outs = net(x)
        # nnU-Net's deep-supervision loss touches every output; backward outside condition() like any caller may
        sum(o.float().square().mean() for o in outs).backward()
        if device == "cuda":
            torch.cuda.synchronize()
    return step


def peak_memory(step, device) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        return torch.cuda.max_memory_allocated() - before
    from torch._C._profiler import _EventType
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocations, nodes = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size))  # frees are negative
    current = peak = 0
    for _, size in sorted(allocations):
        current += size
        peak = max(peak, current)
    return peak


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dim", type=int, default=3)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--token", type=int, default=2)
    p.add_argument("--feature-size", type=int, default=12)
    p.add_argument("--depths", type=int, nargs="+", default=[2, 2, 2, 2])
    p.add_argument("--heads", type=int, nargs="+", default=[3, 6, 12, 24])
    p.add_argument("--window", type=int, default=7)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    nets = {v: build(*v, args) for v in VARIANTS}
    x = torch.randn(args.batch, 1, *(args.patch,) * args.dim, device=args.device)
    modality = torch.arange(args.batch, device=args.device) % 2
    steps = {v: step_fn(n, x, modality, args.device) for v, n in nets.items()}
    clock = time.process_time if args.device == "cpu" else time.perf_counter
    times = {v: [] for v in VARIANTS}
    for _ in range(args.warmup):
        for s in steps.values():
            s()
    for _ in range(args.repeats):
        for v, s in steps.items():
            t = clock()
            s()
            times[v].append(clock() - t)
    ms = {v: statistics.median(t) * 1e3 for v, t in times.items()}
    mib = {v: peak_memory(s, args.device) / 2 ** 20 for v, s in steps.items()}
    params = {v: sum(q.numel() for q in n.parameters()) for v, n in nets.items()}

    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}; input "
          f"{args.batch}x1x{'x'.join([str(args.patch)] * args.dim)}, token {args.token}, feature size "
          f"{args.feature_size}, depths {args.depths}, heads {args.heads}, window {args.window}; time: median of "
          f"{args.repeats} ({'process CPU time' if args.device == 'cpu' else 'wall'}); memory: "
          f"{'torch profiler' if args.device == 'cpu' else 'CUDA allocator'} peak")
    print(f"| {'':40} | {'C-Swin (cin)':>12} | {'LayerNorm ref':>13} | {'ratio':>6} |")
    print(f"|{'-' * 42}|{'-' * 13}:|{'-' * 14}:|{'-' * 7}:|")
    rows = [("parameters", params[("cin", False)], params[("layernorm", False)], "{:,}")]
    for ckpt in (False, True):
        label = "checkpointing" if ckpt else "no checkpointing"
        rows.append((f"fwd+bwd time (ms), {label}", ms[("cin", ckpt)], ms[("layernorm", ckpt)], "{:.0f}"))
        rows.append((f"peak memory (MiB), {label}", mib[("cin", ckpt)], mib[("layernorm", ckpt)], "{:.0f}"))
    rows.append(("checkpointing / none: time", ms[("cin", True)] / ms[("cin", False)],
                 ms[("layernorm", True)] / ms[("layernorm", False)], "{:.2f}"))
    rows.append(("checkpointing / none: peak memory", mib[("cin", True)] / mib[("cin", False)],
                 mib[("layernorm", True)] / mib[("layernorm", False)], "{:.2f}"))
    for name, a, b, fmt in rows:
        print(f"| {name:40} | {fmt.format(a):>12} | {fmt.format(b):>13} | {a / b:6.3f} |")


if __name__ == "__main__":
    main()
