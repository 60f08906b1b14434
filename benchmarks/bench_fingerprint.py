"""Per-modality fingerprint (CINFingerprintExtractor) vs nnU-Net's plain DatasetFingerprintExtractor, same data.

    python benchmarks/bench_fingerprint.py [--ct 8] [--mr 8] [--shape 48] [--np 2] [--repeats 3] [--keep DIR]

Generates a two-modality dataset (nnunet_cin.dataset_conversion.synthetic) in a temporary nnUNet_raw, then runs both extractors
--repeats times each, interleaved (plain, ours, plain, ours, ...) so that machine noise hits both alike, with
nnU-Net's default number of foreground samples (1e8; nnUnet_cin_fingerprint_samples is ignored here). Prints a
Markdown table of the median wall times and their ratio, and whether the dataset-wide statistics agree. Then, in
this process, what ours adds per case (the modality signature's case features, computed on the image nnU-Net's
per-case analysis has just read) next to the cost of reading that image.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ct", type=int, default=8, help="CT cases")
    p.add_argument("--mr", type=int, default=8, help="MR cases")
    p.add_argument("--shape", type=int, default=48, help="edge length of the generated volumes")
    p.add_argument("--np", type=int, default=2, help="worker processes of both extractors")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--keep", default=None, help="use/keep this folder instead of a temporary one")
    args = p.parse_args()

    root = args.keep or tempfile.mkdtemp(prefix="bench_fingerprint_")
    for k, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        os.environ[k] = os.path.join(root, sub)  # nnunetv2.paths reads these at import time: set them first
        os.makedirs(os.environ[k], exist_ok=True)
    os.environ.pop("nnUNet_cin_fingerprint_samples", None)

    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    from nnunet_cin.planning.fingerprint import CINFingerprintExtractor
    from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset

    dataset_id = 997
    if not os.path.isdir(os.path.join(root, "raw", "Dataset997_BenchFingerprint")):
        write_nnunet_dataset(os.path.join(root, "raw"), dataset_id, "BenchFingerprint",
                             cases_per_modality={"CT": args.ct, "MR": args.mr}, shape=(args.shape,) * 3)

    times = {"plain": [], "cin": []}
    results = {}
    for _ in range(args.repeats):
        for name, cls in (("plain", DatasetFingerprintExtractor), ("cin", CINFingerprintExtractor)):
            fpe = cls(dataset_id, args.np, verbose=False)
            fpe.show_progress_bar = False
            t = time.perf_counter()
            results[name] = fpe.run(overwrite_existing=True)
            times[name].append(time.perf_counter() - t)

    a, b = statistics.median(times["cin"]), statistics.median(times["plain"])
    ds_plain = results["plain"]["foreground_intensity_properties_per_channel"]
    ds_plain = ds_plain.get("0", ds_plain.get(0))
    ds_cin = results["cin"]["foreground_intensity_properties_per_channel"]["0"]
    worst = max(abs(ds_cin[k] - ds_plain[k]) / max(abs(ds_plain[k]), 1e-12) for k in ds_plain)

    print(f"{args.ct} CT + {args.mr} MR cases of {args.shape}^3 voxels, {args.np} worker processes, "
          f"{args.repeats} runs each (interleaved), {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    print()
    paired = statistics.median(c / p for c, p in zip(times["cin"], times["plain"]))
    rows = [("nnU-Net DatasetFingerprintExtractor", statistics.median(times["plain"]),
             ", ".join(f"{t:.2f}" for t in times["plain"])),
            ("CINFingerprintExtractor", statistics.median(times["cin"]), ", ".join(f"{t:.2f}" for t in times["cin"])),
            ("ratio of medians (ours / plain)", a / b, "target <= 1.05"),
            ("median of paired ratios", paired, "run i of ours / run i of plain")]
    w0, w2 = max(len(r[0]) for r in rows), max(len(r[2]) for r in rows)
    print(f"| {'fingerprint':{w0}} | {'median s':>9} | {'runs (s)':>{w2}} |")
    print(f"|{'-' * (w0 + 2)}|{'-' * 10}:|{'-' * (w2 + 1)}:|")
    for label, value, runs in rows:
        fmt = f"{value:9.3f}" if "ratio" in label else f"{value:9.2f}"
        print(f"| {label:{w0}} | {fmt} | {runs:>{w2}} |")
    print()
    print(f"dataset-wide intensity statistics, ours vs plain: largest relative difference {worst:.1e}")
    feature_cost(fpe)
    if not args.keep:
        import shutil
        shutil.rmtree(root, ignore_errors=True)


def feature_cost(fpe):
    """Summed over the cases: nnU-Net's reader on the case's images vs case_features on what it read (best of 3)."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    from nnunet_cin.planning.signature import case_features

    cases = list(fpe.dataset.values())
    reader = determine_reader_writer_from_dataset_json(fpe.dataset_json, cases[0]['images'][0])()
    t_read = t_features = 0.0
    for case in cases:
        t_read += min(_timed(lambda: reader.read_images(case['images'])) for _ in range(3))
        images, properties = reader.read_images(case['images'])
        t_features += min(_timed(lambda: case_features(images, properties['spacing'])) for _ in range(3))
    print(f"per case: reading the images {1e3 * t_read / len(cases):.1f} ms, case features "
          f"{1e3 * t_features / len(cases):.2f} ms ({100 * t_features / t_read:.1f} % of reading)")


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
