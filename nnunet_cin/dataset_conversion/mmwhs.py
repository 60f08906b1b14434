"""MM-WHS 2017 (multi-modality whole heart segmentation) to an nnU-Net v2 raw dataset with the modality keys.

    nnUNetv2_convert_mmwhs -i MMWHS_FOLDER [-d 601] [--n4] [--splits FILE [FILE ...] | --stratified-splits]

Reads the official layout: ct_train/ct_train_1001_image.nii.gz + ct_train_1001_label.nii.gz, likewise mr_train/,
and ct_test/ + mr_test/ (images only) when present. Writes $nnUNet_raw/Dataset601_MMWHS with imagesTr/labelsTr
(case ids ct_1001, mr_1001, ...), imagesTs (ct_2001, mr_2001, ...) and a dataset.json with consecutive labels
(205 420 500 550 600 820 850 -> 1..7: MYO LA LV RA RV AA PA) and "modalities"/"modality_patterns".

- Every source file is read completely before anything is written: a cut-off (truncated) or corrupt .nii.gz, or
  a header promising more voxels than the file holds, is an error naming the file (SimpleITK alone would read the
  missing part as zeros). All bad files are listed in one message.
- Labels are all checked before anything is written. The known stray value 421 (mr_train_1010, meant 420, left
  atrium) is set to 420 and reported per file; any other unexpected value is an error naming file and value.
- Image geometry is kept exactly: images are copied byte for byte (read and rewritten only for .nii inputs or
  with --n4), labels are written with the geometry of their source file.
- --n4: N4 bias-field correction (SimpleITK) of the MR images; CT images are copied unchanged.
- --splits: splits_final.json (in $nnUNet_preprocessed/Dataset601_MMWHS) from split lists, e.g. the paper's released
  ones (MI-Seg's dataset/MM-WHS/CT_fold1.json, CT_fold2.json, MR.json); --stratified-splits: nnU-Net's seeded
  5-fold split with each modality spread evenly over the folds. See `load_split_file` / `combine_splits`.
- The source folder is only read. The output is built in a hidden sibling folder and swapped in at the end, so
  rerunning replaces the previous conversion completely (an interrupted run leaves the old one in place).
"""
import argparse
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_cin.io_checks import check_files_complete
from nnunet_cin.training.splits import stratified_crossval_split

# MM-WHS label value -> (nnU-Net label, name)
MMWHS_LABELS = {205: (1, "MYO"), 420: (2, "LA"), 500: (3, "LV"), 550: (4, "RA"), 600: (5, "RV"), 820: (6, "AA"),
                850: (7, "PA")}
KNOWN_STRAY_VALUES = {421: 420}  # mr_train_1010 holds a few voxels of 421, meant as left atrium
MODALITIES = {"CT": "ct", "MR": "mr"}  # modality name -> file prefix
CONVERTER = "nnunet_cin.dataset_conversion.mmwhs"

_FILE_RE = re.compile(r"^(ct|mr)_(train|test)_(\d+)_(image|label)\.nii(\.gz)?$")
_CASE_RE = re.compile(r"^(ct|mr)_(?:(?:train|test)_)?(\d+)(?=$|[_.])", re.IGNORECASE)


class MMWHSError(ValueError):
    """Bad input for the conversion; the message names the file or case and says what to do."""


@dataclass
class SourceCase:
    case_id: str  # nnU-Net case identifier, e.g. "ct_1001"
    modality: str  # "CT" or "MR"
    part: str  # "train" or "test"
    image: Path
    label: Optional[Path]


def dataset_labels() -> Dict[str, int]:
    return {"background": 0, **{name: new for new, name in sorted(MMWHS_LABELS.values())}}


def dataset_json_for(n_training: int, modalities: Sequence[str], extra: Optional[dict] = None) -> dict:
    dj = {
        "channel_names": {"0": "image"},
        "labels": dataset_labels(),
        "numTraining": int(n_training),
        "file_ending": ".nii.gz",
        "name": "MMWHS",
        "description": "MM-WHS 2017 whole-heart substructures, CT and MR (converted by nnunet_cin.dataset_conversion.mmwhs)",
        "reference": "Zhuang et al., Multi-modality whole heart segmentation challenge (MM-WHS 2017)",
        "modalities": list(modalities),
        "modality_patterns": {m: f"^{MODALITIES[m]}_" for m in modalities},
        "converted_by": CONVERTER,
    }
    dj.update(extra or {})
    return dj


# ------------------------------------------------------------------------------------------------------------ input
def find_cases(source) -> List[SourceCase]:
    """The cases of an MM-WHS folder, sorted by case id. ct_train/ and mr_train/ are required, ct_test/ and
    mr_test/ optional. Every training image needs its label (and vice versa)."""
    source = Path(source)
    if not source.is_dir():
        raise MMWHSError(f"MM-WHS folder {source} does not exist (expected the folder holding ct_train/ and mr_train/)")
    missing = [f"{p}_train" for p in MODALITIES.values() if not (source / f"{p}_train").is_dir()]
    if missing:
        present = sorted(p.name for p in source.iterdir() if p.is_dir())
        raise MMWHSError(f"{source}: missing folder(s) {missing}; expected the official MM-WHS 2017 layout "
                         f"ct_train/ct_train_1001_image.nii.gz + ct_train_1001_label.nii.gz, mr_train/..., "
                         f"optionally ct_test/ and mr_test/ (found folders: {present or 'none'})")
    problems, cases = [], []
    for modality, prefix in MODALITIES.items():
        for part in ("train", "test"):
            folder = source / f"{prefix}_{part}"
            if not folder.is_dir():
                continue
            files: Dict[Tuple[str, str], Path] = {}
            for f in sorted(folder.iterdir()):
                m = _FILE_RE.match(f.name)
                if not m:
                    if f.name.endswith((".nii", ".nii.gz")):
                        problems.append(f"{f}: unexpected file name (expected {prefix}_{part}_NNNN_image.nii.gz "
                                        f"or {prefix}_{part}_NNNN_label.nii.gz); move it out of the folder")
                    continue
                if (m.group(1), m.group(2)) != (prefix, part):
                    problems.append(f"{f}: a {m.group(1)}_{m.group(2)} file in {folder.name}/; move it to "
                                    f"{m.group(1)}_{m.group(2)}/")
                    continue
                key = (m.group(3), m.group(4))
                if key in files:
                    problems.append(f"{f}: duplicate of {files[key].name}; keep one of them")
                    continue
                files[key] = f
            numbers = sorted({n for n, _ in files})
            for n in numbers:
                image, label = files.get((n, "image")), files.get((n, "label"))
                if image is None:
                    problems.append(f"{label}: label without image {prefix}_{part}_{n}_image.nii.gz")
                    continue
                if part == "train" and label is None:
                    problems.append(f"{image}: no label file {prefix}_{part}_{n}_label.nii.gz next to it")
                    continue
                # labels in the test folders (released later by the organisers) are not used: imagesTs only
                cases.append(SourceCase(f"{prefix}_{n}", modality, part, image, label if part == "train" else None))
            if part == "train" and not numbers:
                problems.append(f"{folder}: no training cases ({prefix}_train_NNNN_image.nii.gz)")
    seen: Dict[str, SourceCase] = {}
    for c in cases:
        if c.case_id in seen:
            problems.append(f"{c.image} and {seen[c.case_id].image} both become case {c.case_id}")
        seen[c.case_id] = c
    if problems:
        raise MMWHSError("cannot convert the MM-WHS folder:\n  " + "\n  ".join(problems))
    return sorted(cases, key=lambda c: (c.part != "train", c.case_id))


def check_sources(cases: Sequence[SourceCase], num_workers: Optional[int] = None,
                  log: Callable[[str], None] = print) -> Dict[str, Dict[int, int]]:
    """Reads every source file (images and labels) completely, then every training label's values. Returns {case_id:
    {stray value: voxel count}} for the known stray values; raises one MMWHSError listing every incomplete or corrupt
    file (SimpleITK would read a truncated one as zeros), every label with another unexpected value and every label
    whose grid differs from its image."""
    files = [c.image for c in cases] + [c.label for c in cases if c.label is not None]
    log(f"reading {len(files)} source files completely (a cut-off or corrupt file is named before anything is "
        f"written)...")
    incomplete = check_files_complete(files, num_workers or os.cpu_count() or 1)
    problems = [f"{f}: {reason}" for f, reason in incomplete.items()]
    label_problems, strays = _label_problems([c for c in cases if str(c.label) not in incomplete],
                                             images_to_skip={c.image for c in cases if str(c.image) in incomplete})
    problems += label_problems
    if problems:
        raise MMWHSError(f"{len(problems)} bad source file(s), nothing was written:\n  " + "\n  ".join(problems) +
                         ("\nReplace each cut-off or corrupt file with a complete copy from the MM-WHS download (a "
                          "cut-off file is often an interrupted download or unzip) and rerun." if incomplete else ""))
    return strays


def _label_problems(cases: Sequence[SourceCase], images_to_skip: Collection[Path] = ()
                    ) -> Tuple[List[str], Dict[str, Dict[int, int]]]:
    """Reads every training label once: ([problem, ...], {case_id: {stray value: voxel count}}). Problems: a label
    with an unexpected value (other than the known strays) or a grid that differs from its image (not compared for
    the images_to_skip, already reported as broken)."""
    allowed = {0, *MMWHS_LABELS}
    problems, strays = [], {}
    for c in cases:
        if c.label is None:
            continue
        reader = None
        if c.image not in images_to_skip:
            reader = sitk.ImageFileReader()
            try:
                reader.SetFileName(str(c.image))
                reader.ReadImageInformation()
            except RuntimeError as e:
                problems.append(f"{c.image}: cannot be read ({str(e).strip()[:200]})")
                continue
        try:
            label = sitk.ReadImage(str(c.label))
        except RuntimeError as e:
            problems.append(f"{c.label}: cannot be read ({str(e).strip()[:200]})")
            continue
        if reader is not None and tuple(label.GetSize()) != tuple(reader.GetSize()):
            problems.append(f"{c.label}: size {label.GetSize()} differs from its image {c.image.name} "
                            f"{reader.GetSize()}")
            continue
        if label.GetNumberOfComponentsPerPixel() != 1:
            problems.append(f"{c.label}: has {label.GetNumberOfComponentsPerPixel()} components per voxel, "
                            f"expected a scalar label map")
            continue
        values, counts = np.unique(sitk.GetArrayViewFromImage(label), return_counts=True)
        bad = {}
        for v, n in zip(values.tolist(), counts.tolist()):
            if v in allowed:
                continue
            if float(v).is_integer() and int(v) in KNOWN_STRAY_VALUES:
                strays.setdefault(c.case_id, {})[int(v)] = int(n)
            else:
                bad[v] = int(n)
        if bad:
            problems.append(f"{c.label}: unexpected label value(s) " +
                            ", ".join(f"{v:g} ({n} voxels)" for v, n in bad.items()) +
                            f"; MM-WHS labels are 0 and {sorted(MMWHS_LABELS)} (421 is fixed to 420). "
                            f"Fix or remove this file")
    return problems, strays


# ----------------------------------------------------------------------------------------------------------- output
def n4_correct(image: sitk.Image, max_iterations: Sequence[int] = (50, 50, 50, 50)) -> sitk.Image:
    """N4 bias-field correction (SimpleITK), fitted on a shrunken copy inside an Otsu foreground mask and applied at
    full resolution. Float32 output with the input's geometry."""
    img = sitk.Cast(image, sitk.sitkFloat32)
    mask = sitk.OtsuThreshold(img, 0, 1, 200)
    if not np.any(sitk.GetArrayViewFromImage(mask)):
        mask = sitk.Image(img.GetSize(), sitk.sitkUInt8) + 1
        mask.CopyInformation(img)
    shrink = [max(1, min(4, s // 16)) for s in img.GetSize()]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in max_iterations])
    corrector.Execute(sitk.Shrink(img, shrink), sitk.Shrink(mask, shrink))
    corrected = img / sitk.Exp(corrector.GetLogBiasFieldAsImage(img))
    corrected = sitk.Cast(corrected, sitk.sitkFloat32)
    corrected.CopyInformation(image)
    return corrected


def convert_label(label: sitk.Image) -> Tuple[sitk.Image, Dict[int, int]]:
    """MM-WHS values -> 0..7 (uint8, same geometry); the known stray values are mapped first. Returns the label and
    {stray value: voxels fixed}. Unexpected values must have been rejected by check_sources."""
    array = sitk.GetArrayViewFromImage(label)
    out = np.zeros(array.shape, np.uint8)
    for value, (new, _) in MMWHS_LABELS.items():
        out[array == value] = new
    fixed = {}
    for stray, meant in KNOWN_STRAY_VALUES.items():
        where = array == stray
        if where.any():
            out[where] = MMWHS_LABELS[meant][0]
            fixed[stray] = int(where.sum())
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(label)
    return result, fixed


def _write_image(src: Path, dst: Path, n4: bool) -> None:
    if n4:
        sitk.WriteImage(n4_correct(sitk.ReadImage(str(src))), str(dst), True)
    elif src.name.endswith(".nii.gz"):
        shutil.copyfile(src, dst)
    else:
        sitk.WriteImage(sitk.ReadImage(str(src)), str(dst), True)


def _raw_root(raw_root) -> Path:
    if raw_root is None:
        raw_root = os.environ.get("nnUNet_raw")
        if not raw_root:
            raise MMWHSError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw (nnU-Net's raw data folder)")
    return Path(raw_root)


def _output_folder(raw_root: Path, dataset_id: int, name: str, source: Path) -> Path:
    if not 1 <= int(dataset_id) <= 999:
        raise MMWHSError(f"dataset id {dataset_id} is out of range; nnU-Net ids are 1..999")
    target = raw_root / f"Dataset{int(dataset_id):03d}_{name}"
    if target.resolve().is_relative_to(source.resolve()) or source.resolve().is_relative_to(target.resolve()):
        raise MMWHSError(f"output {target} and source {source} overlap; put nnUNet_raw outside the MM-WHS folder")
    if raw_root.is_dir():
        others = [p.name for p in raw_root.glob(f"Dataset{int(dataset_id):03d}_*") if p.is_dir() and p != target]
        if others:
            raise MMWHSError(f"dataset id {dataset_id} is already used by {others} in {raw_root}; choose another id "
                             f"with -d")
    dj = target / "dataset.json"
    if target.exists():
        ours = False
        if dj.is_file():
            try:
                ours = json.loads(dj.read_text()).get("converted_by") == CONVERTER
            except (ValueError, AttributeError):
                ours = False
        if not ours:
            raise MMWHSError(f"{target} exists and was not written by nnUNetv2_convert_mmwhs; remove it or choose "
                             f"another id with -d")
    return target


# ----------------------------------------------------------------------------------------------------------- splits
def case_id_of(entry, where: str = "") -> str:
    """Case id ("ct_1005") of a split-list entry: a case id, a file name or path ("ct_train/ct_train_1005_image.nii.gz",
    "..._label_corrected.nii.gz") or a datalist dict with "image"/"label"."""
    value = entry
    if isinstance(entry, dict):
        value = entry.get("image", entry.get("label"))
    if not isinstance(value, str):
        raise MMWHSError(f"{where}: cannot read a case from entry {entry!r}")
    m = _CASE_RE.match(Path(value).name)
    if not m:
        raise MMWHSError(f"{where}: entry {entry!r} names no MM-WHS case (expected e.g. ct_1001, ct_train_1001 or "
                         f"ct_train/ct_train_1001_image.nii.gz)")
    return f"{m.group(1).lower()}_{m.group(2)}"


def load_split_file(path) -> List[Tuple[List[str], List[str]]]:
    """Folds [(train case ids, val case ids), ...] of one split file. Accepted formats:
    - a Decathlon-style datalist as released with the paper (MI-Seg dataset/MM-WHS/*.json): {"training": [{"image":
      "ct_train/ct_train_1007_image.nii.gz", "label": ...}, ...], "validation": [...]}: one fold ("test" is ignored);
    - {"train": [case ids], "val": [case ids]}: one fold;
    - nnU-Net's splits_final.json layout, a list of such dicts: one fold each."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise MMWHSError(f"split file {path} does not exist") from None
    except ValueError as e:
        raise MMWHSError(f"split file {path} is not valid JSON: {e}") from None

    def fold(train, val, what):
        if not isinstance(train, list) or not isinstance(val, list):
            raise MMWHSError(f"{path}{what}: train/validation must be lists")
        train_ids = [case_id_of(e, f"{path}{what}") for e in train]
        val_ids = [case_id_of(e, f"{path}{what}") for e in val]
        if not val_ids:
            raise MMWHSError(f"{path}{what}: no validation cases (to train on all cases use nnU-Net's fold 'all' "
                             f"instead of a split)")
        both = sorted(set(train_ids) & set(val_ids))
        if both:
            raise MMWHSError(f"{path}{what}: case(s) {both} are in both training and validation")
        return train_ids, val_ids

    if isinstance(content, dict) and "training" in content:
        return [fold(content["training"], content.get("validation", []), "")]
    if isinstance(content, dict) and "train" in content:
        return [fold(content["train"], content.get("val", []), "")]
    if isinstance(content, list) and content and all(isinstance(f, dict) and "train" in f for f in content):
        return [fold(f["train"], f.get("val", []), f" fold {i}") for i, f in enumerate(content)]
    raise MMWHSError(f"split file {path}: unknown format; expected {{'training': [...], 'validation': [...]}} "
                     f"(the paper's datalists), {{'train': [...], 'val': [...]}} or a list of those (splits_final.json)")


def _modality_of_case(case_id: str) -> str:
    return {p: m for m, p in MODALITIES.items()}[case_id.split("_")[0]]


def combine_splits(files: Sequence, training_cases: Sequence[str],
                   log: Callable[[str], None] = print) -> List[Dict[str, List[str]]]:
    """splits_final.json content from several split files.

    Files covering the same modalities give successive folds in the order given; files covering other modalities are
    combined fold by fold, and a group with a single fold is reused for every fold. The paper's split (CT: two folds
    of 10/10, MR: 16/4) is `CT_fold1.json CT_fold2.json MR.json` -> fold 0 = CT_fold1 + MR, fold 1 = CT_fold2 + MR.
    Every case must be a converted training case; training cases missing from a fold are reported."""
    groups: Dict[frozenset, List[Tuple[List[str], List[str]]]] = {}
    known = set(training_cases)
    for f in files:
        folds = load_split_file(f)
        for i, (train, val) in enumerate(folds):
            unknown = sorted(set(train + val) - known)
            if unknown:
                raise MMWHSError(f"split file {f}: case(s) {unknown} are not training cases of the converted dataset "
                                 f"(known: {sorted(known)[:6]}{' ...' if len(known) > 6 else ''})")
        mods = frozenset(_modality_of_case(c) for train, val in folds for c in train + val)
        groups.setdefault(mods, []).extend(folds)
    keys = list(groups)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if a & b:
                raise MMWHSError(f"split files cover modality {sorted(a & b)} in two ways ({sorted(a)} and "
                                 f"{sorted(b)}); give each modality's folds in files of the same modalities")
    n_folds = max(len(g) for g in groups.values())
    for mods, g in groups.items():
        if len(g) not in (1, n_folds):
            raise MMWHSError(f"split files give {len(g)} fold(s) for {sorted(mods)} but {n_folds} for another "
                             f"modality; give 1 or {n_folds}")
    splits = []
    for k in range(n_folds):
        train, val = [], []
        for g in groups.values():
            t, v = g[k if len(g) > 1 else 0]
            train += t
            val += v
        left_out = sorted(known - set(train) - set(val))
        if left_out:
            log(f"note: fold {k} leaves out training case(s) {left_out}")
        splits.append({"train": sorted(train), "val": sorted(val)})
    return splits


def _preprocessed_folder(preprocessed_root, folder_name: str) -> Path:
    if preprocessed_root is None:
        preprocessed_root = os.environ.get("nnUNet_preprocessed")
        if not preprocessed_root:
            raise MMWHSError("nnUNet_preprocessed is not set (needed for splits_final.json): export "
                             "nnUNet_preprocessed=/path/to/nnUNet_preprocessed")
    return Path(preprocessed_root) / folder_name


# ------------------------------------------------------------------------------------------------------ conversion
def convert_mmwhs(source, dataset_id: int = 601, name: str = "MMWHS", n4: bool = False,
                  splits: Optional[Sequence] = None, stratified_splits: bool = False, n_folds: int = 5,
                  raw_root=None, preprocessed_root=None, log: Callable[[str], None] = print) -> Path:
    """Converts the MM-WHS folder `source` (see module docstring). raw_root/preprocessed_root default to the
    nnUNet_raw/nnUNet_preprocessed environment variables (read at call time). Returns the dataset folder."""
    if splits and stratified_splits:
        raise MMWHSError("give either split files or stratified splits, not both")
    source = Path(source)
    raw_root = _raw_root(raw_root)
    target = _output_folder(raw_root, dataset_id, name, source)
    cases = find_cases(source)
    training = [c.case_id for c in cases if c.part == "train"]
    # everything that can fail on the input fails here, before anything is written
    check_sources(cases, log=log)
    split_content = None
    if splits:
        split_content = combine_splits(splits, training, log)
    elif stratified_splits:
        split_content = stratified_crossval_split(training, {c: _modality_of_case(c) for c in training},
                                                  n_splits=n_folds)
    splits_file = _preprocessed_folder(preprocessed_root, target.name) / "splits_final.json" \
        if split_content is not None else None

    partial = raw_root / f".{target.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if any(c.part == "test" for c in cases) else ()):
        (partial / sub).mkdir(parents=True)
    fixed_report = {}
    for i, c in enumerate(cases, 1):
        images = "imagesTr" if c.part == "train" else "imagesTs"
        apply_n4 = n4 and c.modality == "MR"
        log(f"[{i}/{len(cases)}] {c.image.relative_to(source)} -> {images}/{c.case_id}_0000.nii.gz"
            + (" (N4)" if apply_n4 else ""))
        _write_image(c.image, partial / images / f"{c.case_id}_0000.nii.gz", apply_n4)
        if c.label is not None:
            label, fixed = convert_label(sitk.ReadImage(str(c.label)))
            sitk.WriteImage(label, str(partial / "labelsTr" / f"{c.case_id}.nii.gz"), True)
            for value, count in fixed.items():
                log(f"fixed {c.label.relative_to(source)}: {count} voxels of value {value} set to "
                    f"{KNOWN_STRAY_VALUES[value]} ({MMWHS_LABELS[KNOWN_STRAY_VALUES[value]][1]})")
                fixed_report.setdefault(c.case_id, {})[f"{value}->{KNOWN_STRAY_VALUES[value]}"] = count
    modalities = [m for m in MODALITIES if any(c.modality == m for c in cases)]
    conversion = {"source": str(source.resolve()), "n4_mr": bool(n4), "fixed_label_values": fixed_report,
                  "label_values": {str(v): new for v, (new, _) in MMWHS_LABELS.items()}}
    (partial / "dataset.json").write_text(json.dumps(dataset_json_for(len(training), modalities,
                                                                      {"conversion": conversion}), indent=4))
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    log(f"wrote {target}: " + ", ".join(
        f"{m} {sum(c.modality == m for c in cases if c.part == 'train')} training / "
        f"{sum(c.modality == m for c in cases if c.part == 'test')} test" for m in modalities))

    if splits_file is not None:
        splits_file.parent.mkdir(parents=True, exist_ok=True)
        splits_file.write_text(json.dumps(split_content, indent=4))
        log(f"wrote {splits_file}: {len(split_content)} folds")
        for k, s in enumerate(split_content):
            log(f"  fold {k}: " + "; ".join(
                f"{m} {sum(_modality_of_case(c) == m for c in s['train'])} train / "
                f"{sum(_modality_of_case(c) == m for c in s['val'])} val" for m in modalities))
    else:
        existing = _existing_splits(preprocessed_root, target.name)
        if existing is not None:
            stale = sorted({c for s in existing for c in s.get("train", []) + s.get("val", [])} - set(training))
            log(f"note: kept existing {_preprocessed_folder(preprocessed_root, target.name) / 'splits_final.json'}"
                + (f"; it names case(s) {stale} that are not in this conversion: rerun with --stratified-splits or "
                   f"--splits" if stale else ""))
    return target


def _existing_splits(preprocessed_root, folder_name: str):
    try:
        path = _preprocessed_folder(preprocessed_root, folder_name) / "splits_final.json"
    except MMWHSError:
        return None
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_convert_mmwhs",
        description="Convert the MM-WHS 2017 download (ct_train/, mr_train/, optional ct_test/, mr_test/) into an "
                    "nnU-Net v2 raw dataset in $nnUNet_raw with consecutive labels (MYO LA LV RA RV AA PA) and the "
                    "modality keys of nnunet-cin. The source folder is only read.")
    parser.add_argument("-i", "--input", required=True, help="MM-WHS folder holding ct_train/ and mr_train/")
    parser.add_argument("-d", "--dataset-id", type=int, default=601, help="nnU-Net dataset id (default 601)")
    parser.add_argument("-n", "--name", default="MMWHS", help="dataset name (default MMWHS -> Dataset601_MMWHS)")
    parser.add_argument("--n4", action="store_true", help="N4 bias-field correction of the MR images (SimpleITK)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--splits", nargs="+", metavar="JSON",
                       help="write splits_final.json from split lists: the paper's released datalists (e.g. "
                            "CT_fold1.json CT_fold2.json MR.json -> 2 folds), {'train': [...], 'val': [...]} files "
                            "or an nnU-Net splits_final.json")
    group.add_argument("--stratified-splits", action="store_true",
                       help="write splits_final.json: nnU-Net's seeded 5-fold split, stratified by modality")
    parser.add_argument("--folds", type=int, default=5, help="number of folds for --stratified-splits (default 5)")
    args = parser.parse_args(argv)
    try:
        convert_mmwhs(args.input, args.dataset_id, args.name, n4=args.n4, splits=args.splits,
                      stratified_splits=args.stratified_splits, n_folds=args.folds)
    except MMWHSError as e:
        print(f"nnUNetv2_convert_mmwhs: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
