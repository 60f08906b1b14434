"""Cost of nnUNetv2_evaluate_cin's per-case check (case_mismatches: both files read, grids compared, predicted values
listed) against the scoring it protects (nnU-Net's compute_metrics, 7 labels), on one MM-WHS-CT-sized case.

    python benchmarks/bench_evaluate_checks.py [--shape 250 512 512] [--repeats 3] [--folder /tmp]

Median of --repeats, the two interleaved; the ratio is measured in the same run.
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import SimpleITK as sitk
from nnunetv2.evaluation.evaluate_predictions import compute_metrics
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from nnunet_cin.evaluation.evaluate import case_mismatches


def write_case(folder, shape_zyx):
    """A reference with 7 ball-shaped structures and a prediction that misses a slab and is shifted by 2 voxels."""
    rng = np.random.default_rng(0)
    z, y, x = shape_zyx
    zz, yy, xx = np.ogrid[:z, :y, :x]
    ref = np.zeros(shape_zyx, np.uint8)
    for label in range(1, 8):
        c = rng.uniform(0.25, 0.75, 3) * np.array(shape_zyx)
        r = rng.uniform(0.04, 0.1) * min(shape_zyx)
        ref[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r ** 2] = label
    pred = np.roll(ref, 2, axis=1)
    pred[:, :, : x // 100 + 1] = 0
    paths = []
    for name, array in (("ref.nii.gz", ref), ("pred.nii.gz", pred)):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing((0.4, 0.4, 0.6))
        sitk.WriteImage(img, os.path.join(folder, name), True)
        paths.append(os.path.join(folder, name))
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[250, 512, 512], help="z y x (default: MM-WHS CT)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default=None, help="where to write the test files (default: a temporary folder)")
    args = parser.parse_args()
    rw = SimpleITKIO()
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        ref, pred = write_case(folder, tuple(args.shape))
        assert case_mismatches(ref, pred, rw, range(8)) == []
        tasks = {"compute_metrics (nnU-Net, 7 labels)": lambda: compute_metrics(ref, pred, rw, list(range(1, 8))),
                 "case_mismatches (the check)": lambda: case_mismatches(ref, pred, rw, range(8))}
        times = {k: [] for k in tasks}
        for _ in range(args.repeats):
            for k, fn in tasks.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["compute_metrics (nnU-Net, 7 labels)"]
        print(f"shape (z, y, x) {tuple(args.shape)}; median of {args.repeats}")
        print(f"{'task':38s} {'seconds':>9s} {'x scoring':>10s}")
        for k, t in med.items():
            print(f"{k:38s} {t:9.3f} {t / base:10.2f}")


if __name__ == "__main__":
    main()
