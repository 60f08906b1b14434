"""How often the modality signature is right, on generated data: signatures learned from 6 training cases per
modality, tested on held-out cases as they are and after intensity rescaling, cropping and resampling.

    OMP_NUM_THREADS=1 python benchmarks/bench_signature.py [--n-test 10] [--no-timing] [--details]

Cases come from nnunet_cin.dataset_conversion.synthetic (32^3 and 48^3 volumes alternately): "CT" in Hounsfield-like
units, "MR", and two further MR-like sequences "T2" and "T1" whose tables give the structures other brightnesses (T2
differs from MR inside the heart only; T1 also in the surrounding tissue). Each modality's normalization scheme is
the one nnUNetv2_plan_and_preprocess_cin would choose by default (it decides whether the absolute scale is checked).
Prints one Markdown table per set of modalities: for each condition and true modality, held-out cases that were
right / ambiguous / none / WRONG (a confident wrong modality). For CT, a changed intensity scale ("scaled",
"rescaled") is no longer CT as trained: "none" is the expected answer there. Then the cost of the case features
next to the cost of reading the image.
"""
import argparse
import json
import os
import tempfile
import time
from collections import Counter, defaultdict

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunet_cin.dataset_conversion.synthetic import generate_case
from nnunet_cin.planning import signature

MODALITIES = ["CT", "MR", "T2", "T1"]
DATASETS = {"CT/MR": ["CT", "MR"], "CT/MR/T2": ["CT", "MR", "T2"], "CT/MR/T1": ["CT", "MR", "T1"],
            "CT/MR/T2/T1": ["CT", "MR", "T2", "T1"]}
SHAPES = [(32, 32, 32), (48, 48, 48)]
TRAIN_SEEDS = range(6)
TEST_SEED0 = 1000


def default_schemes(modalities):
    from nnunet_cin.planning.planners import normalization_schemes
    return normalization_schemes(modalities, {})


def load(modality, seed):
    image, label = generate_case(modality, seed, SHAPES[seed % 2])
    spacing = image.GetSpacing()[::-1]  # numpy (z, y, x) order, as nnU-Net's reader gives it
    return sitk.GetArrayFromImage(image)[None].astype(np.float32), sitk.GetArrayFromImage(label), spacing


def heart_box(img, lab, sp, seed):
    idx = np.argwhere(lab > 0)
    lo, hi = np.maximum(idx.min(0) - 2, 0), idx.max(0) + 3
    return img[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], sp


def half(img, lab, sp, seed):
    n = img.shape[1] // 2
    return (img[:, :n] if seed % 2 == 0 else img[:, n:]), sp


def resample(factor):
    def f(img, lab, sp, seed):
        out = ndimage.zoom(img[0], factor, order=1)[None]
        return out, tuple(s * img.shape[1 + i] / out.shape[1 + i] for i, s in enumerate(sp))
    return f


def minmax(img, lab, sp, seed):
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo), sp


CONDITIONS = {
    "as generated": lambda img, lab, sp, seed: (img, sp),
    "scaled x0.5": lambda img, lab, sp, seed: (img * 0.5, sp),
    "scaled x3": lambda img, lab, sp, seed: (img * 3.0, sp),
    "rescaled to [0,1]": minmax,
    "cropped to the heart's box": heart_box,
    "half the slices": half,
    "resampled 0.5x": resample(0.5),
    "resampled 2x": resample(2.0),
}


def timing():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (128, 256):
            for modality in ("CT", "MR"):
                image, _ = generate_case(modality, 0, (n, n, n))
                path = os.path.join(tmp, f"{modality}_{n}.nii.gz")
                sitk.WriteImage(image, path)
                t_read = min(_timed(lambda: sitk.GetArrayFromImage(sitk.ReadImage(path))) for _ in range(3))
                arr = sitk.GetArrayFromImage(sitk.ReadImage(path))[None]
                t_feat = min(_timed(lambda: signature.case_features(arr, image.GetSpacing())) for _ in range(5))
                rows.append((n, modality, str(arr.dtype), t_read, t_feat))
    print("\n| size | modality | dtype | read .nii.gz (SimpleITK) | case_features | ratio |\n"
          "|---|---|---|---:|---:|---:|")
    for n, modality, dtype, t_read, t_feat in rows:
        print(f"| {n}^3 | {modality} | {dtype} | {t_read * 1e3:.0f} ms | {t_feat * 1e3:.2f} ms | "
              f"{100 * t_feat / t_read:.1f} % |")
    print("\n(best of 3 reads and 5 feature computations)")


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-test", type=int, default=10, help="held-out cases per modality")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--details", action="store_true", help="print every case that was not right")
    args = parser.parse_args()

    train = {m: [signature.case_features(*load(m, s)[::2]) for s in TRAIN_SEEDS] for m in MODALITIES}
    feats = defaultdict(list)  # (condition, modality) -> [(seed, features)]
    for m in MODALITIES:
        for s in range(TEST_SEED0, TEST_SEED0 + args.n_test):
            img, lab, sp = load(m, s)
            for cond, fn in CONDITIONS.items():
                out, out_sp = fn(img, lab, sp, s)
                feats[cond, m].append((s, signature.case_features(out, out_sp)))

    totals = Counter()
    for dname, mods in DATASETS.items():
        schemes = default_schemes(mods)
        absolute = [m for m in mods if signature.scale_matters(schemes[m])]
        sigs = json.loads(json.dumps(signature.build_signatures({m: train[m] for m in mods}, absolute)))
        print(f"\n### {dname} ({len(json.dumps(sigs))} bytes of JSON; absolute scale checked for "
              f"{', '.join(absolute) or 'none'}), {len(TRAIN_SEEDS)} training cases per modality, {args.n_test} "
              f"held-out cases per cell\n")
        print("| condition | " + " | ".join(mods) + " |\n|---|" + "---|" * len(mods))
        details = []
        for cond in CONDITIONS:
            cells = []
            for m in mods:
                c = Counter()
                for s, f in feats[cond, m]:
                    r = signature.match(sigs, f)
                    key = ("right" if r.best == m else "WRONG") if r.verdict == "match" else r.verdict
                    c[key] += 1
                    totals[key] += 1
                    if key != "right":
                        details.append(f"  {cond}: {m} seed {s}: {r.verdict} candidate={r.candidate} "
                                       f"margin={r.margin:.2f} scores={r.scores}")
                cell = f"{c['right']} / {c['ambiguous']} / {c['none']} / {c['WRONG']}"
                cells.append(f"**{cell}**" if c["WRONG"] else cell)
            print(f"| {cond} | " + " | ".join(cells) + " |")
        print("\ncells: right / ambiguous / none / WRONG (a confident wrong modality)")
        if args.details:
            print("\n".join(details))
    n = sum(totals.values())
    print(f"\nall tables: {n} decisions, {totals['right']} right, {totals['ambiguous']} ambiguous, {totals['none']} "
          f"none, {totals['WRONG']} WRONG")
    if not args.no_timing:
        timing()


if __name__ == "__main__":
    main()
