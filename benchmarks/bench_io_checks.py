"""Cost of nnunet_cin.io_checks against a plain read of the same file, on an MM-WHS-CT-sized volume.

    python benchmarks/bench_io_checks.py [--shape 300 512 512] [--repeats 3] [--folder /tmp]

Writes one CT-like int16 .nii.gz (air, a body cylinder, noise: compresses about like real CT) and its uint8 label,
then times, interleaved so that machine noise hits all alike (median of --repeats):
- SimpleITK ReadImage (the plain read, what conversion and nnU-Net do) and incomplete_reason (the completeness
  check: the whole gzip stream decompressed, sizes compared), for the image and the label;
- the header-only grid check of one case (grid_problems: image + label headers), which planning runs on every case.
Ratios are to the plain read of the same file, measured in the same run.
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import SimpleITK as sitk

from nnunet_cin.io_checks import grid_problems, incomplete_reason


def write_case(folder, shape_zyx):
    rng = np.random.default_rng(0)
    z, y, x = shape_zyx
    yy, xx = np.ogrid[:y, :x]
    body = (yy - y / 2) ** 2 + (xx - x / 2) ** 2 < (0.4 * min(x, y)) ** 2
    heart = (yy - y / 2) ** 2 + (xx - x / 2) ** 2 < (0.12 * min(x, y)) ** 2
    image = np.full(shape_zyx, -1000, np.int16)
    image[:, body] = 40
    image += rng.normal(0, 20, shape_zyx).astype(np.int16)
    label = np.zeros(shape_zyx, np.uint8)
    label[z // 4: 3 * z // 4, heart] = 3
    paths = []
    for name, array in (("image.nii.gz", image), ("label.nii.gz", label)):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing((0.4, 0.4, 0.6))
        sitk.WriteImage(img, os.path.join(folder, name), True)
        paths.append(os.path.join(folder, name))
    return paths


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], help="z y x (default: MM-WHS CT)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default=None, help="where to write the test files (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        image, label = write_case(folder, tuple(args.shape))
        tasks = {
            "image: SimpleITK ReadImage": lambda: sitk.ReadImage(image),
            "image: incomplete_reason": lambda: incomplete_reason(image),
            "label: SimpleITK ReadImage": lambda: sitk.ReadImage(label),
            "label: incomplete_reason": lambda: incomplete_reason(label),
            "case: grid_problems (headers)": lambda: grid_problems("case", [image], label),
        }
        assert incomplete_reason(image) is None and incomplete_reason(label) is None
        times = {k: [] for k in tasks}
        for _ in range(args.repeats):
            for k, fn in tasks.items():
                times[k].append(timed(fn))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"shape (z, y, x) {tuple(args.shape)}: image {os.path.getsize(image) / 1e6:.1f} MB, label "
              f"{os.path.getsize(label) / 1e6:.2f} MB on disk; median of {args.repeats}")
        print(f"{'task':34s} {'seconds':>9s} {'x plain read':>13s}")
        for k, t in med.items():
            base = med["label: SimpleITK ReadImage"] if k.startswith("label") else med["image: SimpleITK ReadImage"]
            print(f"{k:34s} {t:9.3f} {t / base:13.2f}")


if __name__ == "__main__":
    main()
