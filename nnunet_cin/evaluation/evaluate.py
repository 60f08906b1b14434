"""Per-modality evaluation: nnU-Net's metrics per case, summarised per modality and per structure.

    nnUNetv2_evaluate_cin -ref GT -pred PRED [-d DATASET | -dj DATASET_JSON] [-m NAME] [--hd95] [-o OUT_PREFIX]
                          [--ignore_geometry_mismatch] [--ignore_unknown_labels]

Dice/IoU/TP/FP/FN come from nnU-Net's own `compute_metrics` per case; `--hd95` adds the 95th percentile Hausdorff
distance and the average symmetric surface distance (in the images' physical units, spacing respected). The summary
has the layout of the paper's results table: rows are structures plus their mean, columns are modalities.
`summarize_by_modality` is the reusable piece (e.g. for a trainer's validation summary).

Before anything is scored, every prediction is compared with its reference (`case_mismatches`): same shape, same
spacing, origin and direction (up to float32 round-off: GEOMETRY_ATOL, absolute, plus a relative 1e-5), and
only values that are labels of the dataset. Dice is computed voxel by voxel, so a prediction on another grid would be
scored as if it were on the reference's: every mismatch stops the evaluation, all of them listed per case, unless the
user says how to go on (--ignore_geometry_mismatch: score other spacing/origin/direction, skip other shapes;
--ignore_unknown_labels: score, unknown values counting as background); such cases are listed in the output.
"""
import argparse
import csv
import multiprocessing
import os
import sys
from typing import Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, save_json, subfiles
from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import compute_metrics, label_or_region_to_key
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.utilities.json_export import recursive_fix_for_json_export
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from nnunet_cin.modalities import ModalityError, ModalityRules, case_id_from_label_file

LabelOrRegion = Union[int, Tuple[int, ...]]
SURFACE_METRICS = ("HD95", "ASSD")
MEAN_ROW = "mean"


# ---------------------------------------------------------------------------------------------------------------------
# surface distances


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` with at least one face neighbour outside it (the image border counts as outside)."""
    return mask & ~binary_erosion(mask, structure=generate_binary_structure(mask.ndim, 1), border_value=0)


def surface_distance_metrics(mask_ref: np.ndarray, mask_pred: np.ndarray,
                             spacing: Sequence[float]) -> Dict[str, float]:
    """HD95 and ASSD between the surfaces of two boolean masks, in the units of `spacing` (one value per axis).

    HD95 is the 95th percentile of the distances of both surfaces to each other, pooled; ASSD is the mean of the two
    directed average surface distances (medpy's definitions). Both are undefined (NaN) when either mask is empty: a
    missed or hallucinated structure shows in Dice, and NaN keeps it out of the distance means.
    """
    mask_ref, mask_pred = np.asarray(mask_ref, dtype=bool), np.asarray(mask_pred, dtype=bool)
    if mask_ref.shape != mask_pred.shape:
        raise ValueError(f"reference and prediction shapes differ: {mask_ref.shape} vs {mask_pred.shape}")
    if len(spacing) != mask_ref.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match the mask dimensionality {mask_ref.ndim}")
    if not mask_ref.any() or not mask_pred.any():
        return {"HD95": float("nan"), "ASSD": float("nan")}
    # Distances only involve surface voxels, which all lie in the bounding box of both masks: crop to it, one voxel
    # of margin so that the erosion sees the same neighbourhood as in the full image.
    coords = np.nonzero(mask_ref | mask_pred)
    box = tuple(slice(max(int(c.min()) - 1, 0), int(c.max()) + 2) for c in coords)
    s_ref, s_pred = _surface(mask_ref[box]), _surface(mask_pred[box])
    ref_to_pred = distance_transform_edt(~s_pred, sampling=spacing)[s_ref]
    pred_to_ref = distance_transform_edt(~s_ref, sampling=spacing)[s_pred]
    return {"HD95": float(np.percentile(np.concatenate([ref_to_pred, pred_to_ref]), 95)),
            "ASSD": float((ref_to_pred.mean() + pred_to_ref.mean()) / 2)}


def _mask(seg: np.ndarray, label_or_region: LabelOrRegion) -> np.ndarray:
    return np.isin(seg, label_or_region) if isinstance(label_or_region, tuple) else seg == label_or_region


def compute_surface_metrics(reference_file: str, prediction_file: str, image_reader_writer: BaseReaderWriter,
                            labels_or_regions: Sequence[LabelOrRegion],
                            ignore_label: Optional[int] = None) -> Dict[LabelOrRegion, Dict[str, float]]:
    """HD95/ASSD per label (or region) of one case, with the spacing of the reference image (nnU-Net's axis order)."""
    seg_ref, props = image_reader_writer.read_seg(reference_file)
    seg_pred, _ = image_reader_writer.read_seg(prediction_file)
    seg_ref, seg_pred = seg_ref[0], seg_pred[0]
    spacing = list(props["spacing"])
    if seg_ref.shape != seg_pred.shape:
        raise ValueError(f"{prediction_file}: shape {seg_pred.shape} differs from the reference's {seg_ref.shape}")
    # 2D images come as (1, y, x) with a dummy spacing: drop singleton axes, else every voxel would be "border"
    single = tuple(i for i, s in enumerate(seg_ref.shape) if s == 1)
    if single and len(single) < seg_ref.ndim:
        seg_ref, seg_pred = seg_ref.squeeze(single), seg_pred.squeeze(single)
        spacing = [sp for i, sp in enumerate(spacing) if i not in single]
    valid = None if ignore_label is None else seg_ref != ignore_label
    out = {}
    for r in labels_or_regions:
        pred = _mask(seg_pred, r)
        if valid is not None:
            pred &= valid
        out[r] = surface_distance_metrics(_mask(seg_ref, r), pred, spacing)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# summaries


def label_names_of(dataset_json: dict) -> Dict[str, str]:
    """{nnU-Net metric key (str of the label, or of the region tuple): structure name}, foreground only. Keys follow
    nnU-Net's LabelManager: labels are ints, regions (any entry with several labels) are tuples."""
    labels = {n: v for n, v in dataset_json["labels"].items() if n != "ignore"}
    has_regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
    names = {}
    for name, v in labels.items():
        if has_regions:
            key = tuple(v) if isinstance(v, (list, tuple)) else int(v)
        else:
            key = int(v[0]) if isinstance(v, (list, tuple)) else int(v)
        if set(np.atleast_1d(key).tolist()) != {0}:
            names[label_or_region_to_key(key)] = name
    return names


def _nanmean(values) -> float:
    values = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    if values.size == 0 or np.all(np.isnan(values)):
        return float("nan")
    return float(np.nanmean(values))


def summarize_by_modality(results: dict, modality_of: Union[Mapping[str, str], Callable[[str], str]],
                          file_ending: str, label_names: Optional[Mapping[str, str]] = None,
                          metrics: Optional[Sequence[str]] = None,
                          modalities: Optional[Sequence[str]] = None) -> dict:
    """Per-modality, per-structure means of nnU-Net's per-case metrics.

    results: what nnU-Net's `compute_metrics_on_folder` returns (or `load_summary_json` reads back from a
        summary.json); only `results["metric_per_case"]` is used, cases are named by their prediction file.
    modality_of: case identifier -> modality name (a dict, or e.g. `ModalityRules.modality_of`).
    file_ending: the dataset's file ending, to turn prediction file names into case identifiers.
    label_names: {str(label or region): structure name}, e.g. `label_names_of(dataset_json)`; default: every
        non-background key found, named by its value.
    metrics: metric names to summarise (default: "Dice" plus HD95/ASSD where present).
    modalities: column order (default: order of first appearance).

    Returns a JSON-ready dict: {"modalities": [...], "structures": [... , "mean"], "metrics": [...],
    "num_cases": {modality: n}, "cases": {modality: [case ids]},
    "per_modality": {modality: {structure: {metric: mean over the modality's cases}, "mean": {metric: mean over
    structures}}}}. Means skip NaN (Dice of a structure absent from both reference and prediction; undefined
    distances).
    """
    per_case = results["metric_per_case"]
    lookup = modality_of if callable(modality_of) else modality_of.__getitem__
    if label_names is None:
        keys = {label_or_region_to_key(k) for c in per_case for k in c["metrics"]}
        label_names = {k: k for k in sorted(keys) if k not in ("0", "(0,)")}
    if metrics is None:
        present = {m for c in per_case for v in c["metrics"].values() for m in v}
        metrics = ["Dice"] + [m for m in SURFACE_METRICS if m in present]
    groups: Dict[str, List[dict]] = {}
    case_ids: Dict[str, List[str]] = {}
    for case in per_case:
        cid = case_id_from_label_file(case["prediction_file"], file_ending)
        m = lookup(cid)
        groups.setdefault(m, []).append({label_or_region_to_key(k): v for k, v in case["metrics"].items()})
        case_ids.setdefault(m, []).append(cid)
    order = list(modalities) if modalities is not None else []
    order += [m for m in groups if m not in order]
    per_modality = {}
    for m in order:
        cases = groups.get(m, [])
        table = {name: {metric: _nanmean([c[key].get(metric, np.nan) for c in cases if key in c])
                        for metric in metrics}
                 for key, name in label_names.items()}
        table[MEAN_ROW] = {metric: _nanmean([table[name][metric] for name in label_names.values()])
                           for metric in metrics}
        per_modality[m] = table
    return {"modalities": order, "structures": list(label_names.values()) + [MEAN_ROW], "metrics": list(metrics),
            "num_cases": {m: len(groups.get(m, [])) for m in order}, "cases": {m: case_ids.get(m, []) for m in order},
            "per_modality": per_modality}


def format_table(summary: dict, metric: str = "Dice", digits: int = 4) -> str:
    """The summary as a text table: structures (and their mean) down, modalities across."""
    mods = summary["modalities"]
    header = [metric] + [f"{m} (n={summary['num_cases'][m]})" for m in mods]
    rows = [[s] + [f"{summary['per_modality'][m][s][metric]:.{digits}f}" for m in mods]
            for s in summary["structures"]]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows[:-1]] + ["  ".join("-" * w for w in widths), fmt(rows[-1])]
    return "\n".join(lines)


def write_csv(summary: dict, filename: str):
    """One row per structure (and the mean), one column per metric and modality ("Dice CT", "Dice MR", ...)."""
    with open(filename, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["structure"] + [f"{metric} {m}" for metric in summary["metrics"]
                                         for m in summary["modalities"]])
        for s in summary["structures"]:
            writer.writerow([s] + [summary["per_modality"][m][s][metric] for metric in summary["metrics"]
                                   for m in summary["modalities"]])


# ---------------------------------------------------------------------------------------------------------------------
# checks: can each prediction be scored against its reference?


class CaseMismatchError(ValueError):
    """Predictions that do not match their reference (grid or label values); the message lists every case."""


SHAPE, GEOMETRY, LABELS = "shape", "geometry", "labels"  # kinds of mismatch: what --ignore_* flags may let through


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in np.ravel(values)) + ")"


def _geometry(props: dict) -> Dict[str, np.ndarray]:
    """What places a file's voxels in space, as nnU-Net's reader reports it: SimpleITK's spacing, origin and direction
    (x, y, z order, as image viewers show them), else the reader's spacing and nibabel's affine."""
    if "sitk_stuff" in props:
        return {k: np.asarray(props["sitk_stuff"][k], float) for k in ("spacing", "origin", "direction")}
    geometry = {"spacing": np.asarray(props["spacing"], float)}
    if "nibabel_stuff" in props:
        geometry["affine"] = np.asarray(props["nibabel_stuff"]["original_affine"], float)
    return geometry


# np.allclose is relative (rtol 1e-5) with an absolute part of 1e-8: at an origin or a direction cosine of 0 that is
# far below the float32 round-off of a NIfTI header. Geometry agrees within rtol 1e-5 plus an absolute part in the
# quantity's own units: 1 um for positions and lengths (float32 round-off of coordinates up to 10 m is below it, a
# shift of a tenth of a voxel is far above), 1e-4 for direction cosines (float32 quaternions; 0.02 mm at 200 mm).
GEOMETRY_RTOL = 1e-5
GEOMETRY_ATOL = {"spacing": 1e-3, "origin": 1e-3, "direction": 1e-4, "affine": 1e-3}


def same_geometry(key: str, prediction: np.ndarray, reference: np.ndarray) -> bool:
    return prediction.shape == reference.shape and \
        np.allclose(prediction, reference, rtol=GEOMETRY_RTOL, atol=GEOMETRY_ATOL[key])


def case_mismatches(reference_file: str, prediction_file: str, image_reader_writer: BaseReaderWriter,
                    allowed_values: Collection[int]) -> List[Tuple[str, str]]:
    """[(kind, what is wrong)] of one prediction against its reference, read as nnU-Net's metrics read them: another
    shape (SHAPE), another spacing/origin/direction (GEOMETRY, beyond float32 round-off: same_geometry) or values
    that are not in allowed_values (LABELS). Empty when the prediction can be scored."""
    seg_ref, props_ref = image_reader_writer.read_seg(reference_file)
    seg_pred, props_pred = image_reader_writer.read_seg(prediction_file)
    found = []
    if seg_pred.shape != seg_ref.shape:
        # in the order of the geometry below: SimpleITK's (x, y, z) where it is the reader, else the array's
        order = slice(None, None, -1) if "sitk_stuff" in props_ref else slice(None)
        found.append((SHAPE, f"shape {seg_pred.shape[1:][order]} differs from the reference's "
                             f"{seg_ref.shape[1:][order]}"))
    geo_ref, geo_pred = _geometry(props_ref), _geometry(props_pred)
    for key in geo_ref:
        if not same_geometry(key, geo_pred[key], geo_ref[key]):
            found.append((GEOMETRY, f"{key} {_fmt(geo_pred[key])} differs from the reference's {_fmt(geo_ref[key])}"))
    allowed_values = set(allowed_values)
    unknown = sorted(v for v in pd.unique(seg_pred.ravel()).tolist() if v not in allowed_values)
    if unknown:
        found.append((LABELS, f"value(s) {', '.join(f'{v:g}' for v in unknown)} are not labels of the dataset "
                              f"({', '.join(str(v) for v in sorted(allowed_values))})"))
    return found


def sort_mismatches(mismatches: Mapping[str, List[Tuple[str, str]]], num_cases: int, folder_ref: str,
                    folder_pred: str, ignore_geometry_mismatch: bool = False,
                    ignore_unknown_labels: bool = False) -> List[str]:
    """The cases to skip (another shape, with ignore_geometry_mismatch). Raises one CaseMismatchError listing every
    mismatched case unless the flags let all of them through."""
    allowed = ({SHAPE, GEOMETRY} if ignore_geometry_mismatch else set()) | \
        ({LABELS} if ignore_unknown_labels else set())
    blocking = {c: m for c, m in mismatches.items() if any(kind not in allowed for kind, _ in m)}
    if blocking:
        kinds = {kind for m in blocking.values() for kind, _ in m}
        advice = ["Re-predict these cases, or check that -ref and -pred hold the same cases."]
        if kinds & {SHAPE, GEOMETRY}:
            advice.append("--ignore_geometry_mismatch scores cases whose spacing, origin or direction differ anyway "
                          "(voxel by voxel, as if on the reference's grid) and skips cases of another shape.")
        if LABELS in kinds:
            advice.append("--ignore_unknown_labels scores predictions holding values that are not dataset labels "
                          "(those voxels count as background).")
        raise CaseMismatchError(
            f"{len(blocking)} of {num_cases} prediction(s) in {folder_pred} do not match their reference in "
            f"{folder_ref}; nothing was scored:\n  " +
            "\n  ".join(f"{c}: " + "; ".join(text for _, text in m) for c, m in sorted(blocking.items())) +
            "\n" + " ".join(advice))
    return sorted(c for c, m in mismatches.items() if any(kind == SHAPE for kind, _ in m))


def _nnunet_means(per_case: List[dict], labels: Sequence[LabelOrRegion]) -> Tuple[dict, dict]:
    """nnU-Net 2.8.1's means of compute_metrics_on_folder, copied: that function scores every file of a folder, with
    no way to leave out a case that cannot be scored; the only change: it is given the per-case results."""
    metric_list = list(per_case[0]["metrics"][labels[0]].keys())
    means = {r: {m: np.nanmean([i["metrics"][r][m] for i in per_case]) for m in metric_list} for r in labels}
    foreground_mean = {m: np.mean([means[k][m] for k in means if not (k == 0 or k == "0")]) for m in metric_list}
    return means, foreground_mean


# ---------------------------------------------------------------------------------------------------------------------
# folders


class _InProcess:
    """A pool for -np 1: the same starmap, without starting a worker process (each imports torch: seconds)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def starmap(function, iterable):
        return [function(*args) for args in iterable]


def _pool(num_processes: int):
    return _InProcess() if num_processes == 1 else multiprocessing.get_context("spawn").Pool(num_processes)


def foreground_union(dataset_json: dict) -> Tuple[int, ...]:
    """Every foreground label value of the dataset: the region whose Dice is, for the heart, MM-WHS's whole-heart
    score (a voxel of any structure predicted as any other structure still counts as heart)."""
    values = set()
    for name, v in dataset_json["labels"].items():
        if name != "ignore":
            values.update(int(x) for x in np.atleast_1d(v).tolist())
    values.discard(0)
    if not values:
        raise ValueError("dataset.json has no foreground labels")
    return tuple(sorted(values))


def evaluate_folder(folder_ref: str, folder_pred: str, dataset_json: dict, modality: Optional[str] = None,
                    surface_metrics: bool = False, num_processes: int = default_num_processes,
                    chill: bool = False, ignore_geometry_mismatch: bool = False,
                    ignore_unknown_labels: bool = False,
                    extra_regions: Optional[Mapping[str, Sequence[int]]] = None) -> dict:
    """nnU-Net's metrics of every prediction in folder_pred against folder_ref, plus HD95/ASSD if asked, and their
    per-modality summary. Every prediction is checked against its reference first (case_mismatches,
    sort_mismatches: CaseMismatchError unless the ignore_* flags let the mismatches through). Returns {"summary":
    summarize_by_modality(...), "metric_per_case": [...], "nnunet_mean": nnU-Net's means over all scored cases,
    "nnunet_foreground_mean": ..., "mismatches": {case: [what differs]} (cases scored anyway), "skipped": {case:
    [what differs]} (another shape, not scored)}.

    extra_regions: {name: label values}, e.g. {"WH": foreground_union(dataset_json)}: measured per case beside the
    labels (nnU-Net's metrics of the union of those labels), named so in metric_per_case and nnunet_mean, kept out of
    the summary and its structure mean (nnunet_foreground_mean, nnU-Net's own, does include them)."""
    file_ending = dataset_json["file_ending"]
    pred_files = subfiles(folder_pred, suffix=file_ending, join=False)
    if not pred_files:
        raise FileNotFoundError(f"no predictions ending in {file_ending} in {folder_pred}")
    missing_ref = [f for f in pred_files if not isfile(join(folder_ref, f))]
    if missing_ref:
        raise FileNotFoundError(f"{len(missing_ref)} prediction(s) have no reference segmentation in {folder_ref}: "
                                f"{', '.join(missing_ref)}")
    if not chill:
        missing_pred = [f for f in subfiles(folder_ref, suffix=file_ending, join=False) if f not in pred_files]
        if missing_pred:
            raise FileNotFoundError(f"{len(missing_pred)} reference case(s) have no prediction in {folder_pred} "
                                    f"(use --chill to evaluate what is there): {', '.join(missing_pred)}")
    # resolve every case's modality before any computation: a bad case stops the run at once
    modality_of = ModalityRules.from_dataset_json(dataset_json).resolve(
        [case_id_from_label_file(f, file_ending) for f in pred_files], modality)

    lm = LabelManager(dataset_json["labels"], regions_class_order=dataset_json.get("regions_class_order"))
    labels = lm.foreground_regions if lm.has_regions else lm.foreground_labels
    allowed_values = set(lm.all_labels) | ({lm.ignore_label} if lm.has_ignore_label else set())
    rw = determine_reader_writer_from_dataset_json(dataset_json, join(folder_pred, pred_files[0]))()
    num_processes = max(1, min(num_processes, len(pred_files)))
    extra = {tuple(int(v) for v in region): name for name, region in (extra_regions or {}).items()}
    scored = list(labels) + list(extra)
    cases = [(case_id_from_label_file(f, file_ending), join(folder_ref, f), join(folder_pred, f)) for f in pred_files]
    with _pool(num_processes) as pool:
        found = pool.starmap(case_mismatches, [(ref, pred, rw, allowed_values) for _, ref, pred in cases])
        mismatches = {c: m for (c, _, _), m in zip(cases, found) if m}
        skipped = sort_mismatches(mismatches, len(cases), folder_ref, folder_pred, ignore_geometry_mismatch,
                                  ignore_unknown_labels)
        cases = [case for case in cases if case[0] not in skipped]
        if not cases:
            raise CaseMismatchError(f"no prediction in {folder_pred} has the shape of its reference: nothing to score")
        per_case = pool.starmap(compute_metrics, [(ref, pred, rw, scored, lm.ignore_label) for _, ref, pred in cases])
        means, foreground_mean = _nnunet_means(per_case, scored)
        if surface_metrics:
            args = [(c["reference_file"], c["prediction_file"], rw, labels, lm.ignore_label) for c in per_case]
            distances = pool.starmap(compute_surface_metrics, args)
            for case, dist in zip(per_case, distances):
                for r, values in dist.items():
                    case["metrics"][r].update(values)

    names = label_names_of(dataset_json)
    scored_modalities = {modality_of[c] for c, _, _ in cases}
    summary = summarize_by_modality({"metric_per_case": per_case}, modality_of, file_ending, names,
                                    metrics=["Dice"] + (list(SURFACE_METRICS) if surface_metrics else []),
                                    modalities=[m for m in ModalityRules.from_dataset_json(dataset_json).modalities
                                                if m in scored_modalities])
    names_per_case = {**names, **{label_or_region_to_key(r): name for r, name in extra.items()}}
    described = lambda m: [text for _, text in m]  # noqa: E731
    out_cases = []
    for c in per_case:
        case = case_id_from_label_file(c["prediction_file"], file_ending)
        out_cases.append({"case": case, "modality": modality_of[case], "reference_file": c["reference_file"],
                          "prediction_file": c["prediction_file"],
                          "metrics": {names_per_case.get(label_or_region_to_key(k), label_or_region_to_key(k)): v
                                      for k, v in c["metrics"].items()},
                          **({"mismatches": described(mismatches[case])} if case in mismatches else {})})
    out = {"summary": summary, "metric_per_case": out_cases,
           "nnunet_mean": {names_per_case.get(label_or_region_to_key(k), label_or_region_to_key(k)): v
                           for k, v in means.items()},
           "nnunet_foreground_mean": foreground_mean,
           "mismatches": {c: described(m) for c, m in mismatches.items() if c not in skipped},
           "skipped": {c: described(mismatches[c]) for c in skipped}}
    recursive_fix_for_json_export(out)
    return out


def load_dataset_json(dataset: Optional[str] = None, dataset_json_file: Optional[str] = None) -> dict:
    """dataset.json from a file, or via nnU-Net's dataset lookup (name or id) in nnUNet_raw."""
    if dataset_json_file is not None:
        return load_json(dataset_json_file)
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    if not nnUNet_raw:  # nnU-Net 2.8: a lazy path object, falsy while the variable is unset
        raise RuntimeError("nnUNet_raw is not set: pass the dataset.json with -dj instead of -d")
    return load_json(join(nnUNet_raw, maybe_convert_to_dataset_name(dataset), "dataset.json"))


def run_cli(argv: Optional[Sequence[str]] = None) -> dict:
    """The command's work; returns what it writes to PREFIX.json."""
    parser = argparse.ArgumentParser(prog="nnUNetv2_evaluate_cin",
                                     description="Per-modality, per-structure metrics of a prediction folder "
                                                 "(nnU-Net's metrics; rows: structures + mean, columns: modalities).")
    parser.add_argument("-ref", required=True, help="folder with the reference segmentations")
    parser.add_argument("-pred", required=True, help="folder with the predicted segmentations")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("-d", help="dataset name or id; its dataset.json (labels, modality rules) is read from "
                                   "nnUNet_raw")
    source.add_argument("-dj", help="path to the dataset.json instead of -d. Without -d and -dj: the dataset.json "
                                    "that nnUNetv2_predict(_cin) wrote into PRED")
    parser.add_argument("-m", "--modality", default=None,
                        help="treat every case as this modality (default: each case's modality from the dataset's "
                             "rules)")
    parser.add_argument("--hd95", action="store_true", help="also compute HD95 and ASSD (physical units)")
    parser.add_argument("-o", default=None,
                        help="output prefix: writes PREFIX.json and PREFIX.csv. Default: PRED/summary_cin")
    parser.add_argument("-np", type=int, default=default_num_processes,
                        help=f"number of processes. Default: {default_num_processes}")
    parser.add_argument("--chill", action="store_true",
                        help="don't stop if some reference cases have no prediction")
    parser.add_argument("--ignore_geometry_mismatch", action="store_true",
                        help="score predictions whose spacing, origin or direction differ from their reference "
                             "anyway (voxel by voxel, as if on the reference's grid) and skip those of another shape; "
                             "both are listed in the output. Default: any such case stops the evaluation before "
                             "anything is scored")
    parser.add_argument("--ignore_unknown_labels", action="store_true",
                        help="score predictions holding values that are not labels of the dataset anyway (those "
                             "voxels count as background for every structure; listed in the output). Default: stop")
    args = parser.parse_args(argv)
    if args.d is None and args.dj is None:
        if not isfile(join(args.pred, "dataset.json")):
            parser.error(f"pass -d DATASET or -dj DATASET_JSON ({args.pred} has no dataset.json)")
        args.dj = join(args.pred, "dataset.json")
    try:
        dataset_json = load_dataset_json(args.d, args.dj)
        result = evaluate_folder(args.ref, args.pred, dataset_json, args.modality, args.hd95, args.np, args.chill,
                                 args.ignore_geometry_mismatch, args.ignore_unknown_labels)
    except (ModalityError, FileNotFoundError, CaseMismatchError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    prefix = args.o if args.o is not None else join(args.pred, "summary_cin")
    prefix = prefix[:-5] if prefix.endswith(".json") else prefix
    if os.path.dirname(prefix):
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
    save_json(result, prefix + ".json", sort_keys=False)
    write_csv(result["summary"], prefix + ".csv")
    for metric in result["summary"]["metrics"]:
        print(format_table(result["summary"], metric), end="\n\n")
    for key, what in (("mismatches", "scored although they do not match their reference"),
                      ("skipped", "skipped: another shape than their reference")):
        if result[key]:
            print(f"{len(result[key])} case(s) {what}:\n" +
                  "\n".join(f"  {c}: " + "; ".join(m) for c, m in result[key].items()), end="\n\n")
    print(f"written: {prefix}.json, {prefix}.csv")
    return result


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of nnUNetv2_evaluate_cin (returns None: console scripts exit with the return value)."""
    run_cli(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
