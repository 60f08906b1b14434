"""Is an image file complete? Is a raw dataset's every case readable with matching image and label grids?

SimpleITK (and ITK behind it) reads a NIfTI file whose data stops early, a truncated .nii.gz included, without a
word: the missing voxels come back as zeros. A label cut in half loses its foreground, an image gets a black slab,
and every later step (conversion, planning, training, evaluation) works on the wrong data with exit code 0.

`incomplete_reason(path)` reads a file to its end and compares what it holds with what its header promises:
- .nii.gz (and any other gzip file): the whole gzip stream is decompressed, so a truncated file, a corrupt block
  (CRC or length mismatch) or garbage after the stream is caught (zero padding and several members are fine, as
  for every gzip reader);
- NIfTI-1/NIfTI-2 (.nii, .nii.gz): the data must hold vox_offset + voxels x bytes per voxel, voxels being the
  product of the header's dimensions, and not a voxel more (a header promising fewer slices than the data holds
  would have the readers drop the rest);
- other formats (.nrrd, .mha, .png, ...) that are not gzip files are not checked (returns None).
It costs about one decompression, like a plain read of the file (benchmarks/bench_io_checks.py).

`check_files_complete` does that for many files on threads (zlib releases the GIL) and lists every bad file in one
FileCheckError; `check_raw_dataset` is what nnUNetv2_plan_and_preprocess_cin runs before it writes anything: the
image and label grids of every training case compared from the headers (cheap, always), and with
--verify_dataset_integrity every image and label read completely.
"""
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
NIFTI_ENDINGS = (".nii", ".nii.gz")
_READ, _OUT = 1 << 18, 1 << 22  # compressed bytes read, decompressed bytes made at a time: bounded memory, and
# reused buffers: a label (0.1 MB holding 80 MB) is checked 2x faster than with one big buffer


class FileCheckError(ValueError):
    """One or more input files are incomplete, corrupt or do not match; the message lists each file and what to do."""


# ------------------------------------------------------------------------------------------------------ one file
def _nifti_expected_size(header: bytes) -> int:
    """Bytes a single-file NIfTI-1/NIfTI-2 must hold (header + extensions up to vox_offset + voxel data). Raises
    ValueError, in words, for a header that is not NIfTI or is inconsistent."""
    if len(header) < 4:
        raise ValueError("too short for a NIfTI header")
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
        if sizeof_hdr in (348, 540):
            break
    else:
        raise ValueError("not a NIfTI file (the header size field is neither 348 nor 540)")
    if len(header) < sizeof_hdr:
        raise ValueError(f"the NIfTI header is cut off ({len(header)} of {sizeof_hdr} bytes)")
    if sizeof_hdr == 348:  # NIfTI-1: dim int16[8] at 40, bitpix int16 at 72, vox_offset float32 at 108
        dims = struct.unpack(endian + "8h", header[40:56])
        bitpix = struct.unpack(endian + "h", header[72:74])[0]
        vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
        vox_offset = max(vox_offset, 352)  # single-file minimum (header + 4 extension bytes)
    else:  # NIfTI-2: bitpix int16 at 14, dim int64[8] at 16, vox_offset int64 at 168
        bitpix = struct.unpack(endian + "h", header[14:16])[0]
        dims = struct.unpack(endian + "8q", header[16:80])
        vox_offset = max(struct.unpack(endian + "q", header[168:176])[0], 544)
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1:ndim + 1]):
        raise ValueError(f"invalid NIfTI dimensions {list(dims[:ndim + 1 if 0 <= ndim <= 7 else 8])}")
    if bitpix <= 0:
        raise ValueError(f"invalid NIfTI bits per voxel {bitpix}")
    return vox_offset + (int(np.prod(dims[1:ndim + 1], dtype=np.int64)) * bitpix + 7) // 8


class _Damaged(Exception):
    """What is wrong with a file, in words."""


def _read_gzip(f) -> Tuple[bytes, int]:
    """(first 540 bytes, total size) of the data in gzip file object f: every member decompressed, its CRC32 and
    length checked by zlib. Raises _Damaged. zlib directly: faster than Python's gzip module."""
    head, size = b"", 0
    d, pending = zlib.decompressobj(31), b""  # 31: gzip wrapper; zlib checks the trailer's CRC32 and length
    while True:
        chunk = pending or f.read(_READ)
        pending = b""
        if not chunk:
            break
        try:
            data = d.decompress(chunk, _OUT)
            while True:
                if len(head) < 540:
                    head += data[:540 - len(head)]
                size += len(data)
                if d.eof or not (d.unconsumed_tail or len(data) == _OUT):  # a full buffer: more may be pending
                    break
                data = d.decompress(d.unconsumed_tail, _OUT)
        except zlib.error as e:
            raise _Damaged(f"is a corrupt gzip file ({e})") from None
        if d.eof:  # end of a member: another member, zero padding (tolerated by gzip readers) or damage
            rest = d.unused_data
            while len(rest) < 2 and (more := f.read(_READ)):
                rest += more
            if not rest:
                return head, size
            if rest.startswith(GZIP_MAGIC):
                d, pending = zlib.decompressobj(31), rest
                continue
            if rest.strip(b"\0") or f.read().strip(b"\0"):
                raise _Damaged("is a corrupt gzip file: its compressed data is followed by bytes that are not gzip "
                               "data")
            return head, size
    raise _Damaged("is truncated (the gzip stream ends before its end marker: the file was cut off)")


def incomplete_reason(path) -> Optional[str]:
    """None if `path` holds everything its format promises; else what is wrong, in words (for a message that also
    names the file). Reads the whole file; see the module docstring for what is checked per format."""
    path = os.fspath(path)
    nifti = path.endswith(NIFTI_ENDINGS)
    try:
        with open(path, "rb") as f:
            if f.read(2) == GZIP_MAGIC:
                f.seek(0)
                header, size = _read_gzip(f)
            elif nifti:  # an uncompressed file named .nii.gz is read as plain NIfTI by ITK and nibabel alike
                f.seek(0)
                header, size = f.read(540), os.path.getsize(path)
            else:
                return None  # a format we do not check
    except FileNotFoundError:
        return "does not exist"
    except _Damaged as e:
        return str(e)
    except OSError as e:
        return f"cannot be read ({e})"
    if not nifti:
        return None
    try:
        expected = _nifti_expected_size(header)
    except ValueError as e:
        return f"has a broken header: {e}"
    if size < expected:
        return (f"holds {size} bytes of NIfTI data but its header promises {expected} (the file was cut off or the "
                f"header's dimensions are wrong)")
    if size - expected >= _voxel_bytes(header):  # readers take what the header says: the rest would be dropped
        return (f"holds {size} bytes of NIfTI data but its header promises only {expected} (the header's dimensions "
                f"are smaller than the data: readers would drop the voxels beyond them)")
    return None


def _voxel_bytes(header: bytes) -> int:
    """Bytes of one voxel of a NIfTI header that _nifti_expected_size accepted."""
    endian = "<" if struct.unpack("<i", header[:4])[0] in (348, 540) else ">"
    offset = 72 if struct.unpack(endian + "i", header[:4])[0] == 348 else 14
    return max(1, struct.unpack(endian + "h", header[offset:offset + 2])[0] // 8)


def check_files_complete(paths: Iterable, num_workers: int = 4) -> Dict[str, str]:
    """{file: reason} for every incomplete file among `paths` (see incomplete_reason); empty when all are fine.
    Files are read on `num_workers` threads."""
    paths = [os.fspath(p) for p in paths]
    with ThreadPoolExecutor(max(1, min(num_workers, len(paths) or 1))) as pool:
        reasons = list(pool.map(incomplete_reason, paths))
    return {p: r for p, r in zip(paths, reasons) if r is not None}


# ------------------------------------------------------------------------------------------------------ a dataset
def _header(path: str):
    import SimpleITK as sitk
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader


def grid_problems(case: str, images: Sequence[str], label: Optional[str]) -> List[str]:
    """What is wrong with one training case's grids, from the file headers only (SimpleITK): unreadable files, an
    image or label of another size, spacing (tolerance of nnU-Net's own integrity check) or dimensionality than the
    case's first image, a label with several components per voxel."""
    problems, headers = [], {}
    for f in list(images) + ([label] if label is not None else []):
        if not os.path.isfile(f):
            problems.append(f"{case}: {f} does not exist")
            continue
        try:
            headers[f] = _header(f)
        except RuntimeError as e:
            problems.append(f"{case}: {f} cannot be read ({str(e).strip().splitlines()[-1][:200]})")
    if problems or not images:
        return problems
    first = headers[images[0]]
    for f in list(images[1:]) + ([label] if label is not None else []):
        h, what = headers[f], "label" if f == label else "image"
        if h.GetSize() != first.GetSize():
            problems.append(f"{case}: {what} {f} has size {h.GetSize()}, its image {os.path.basename(images[0])} "
                            f"{first.GetSize()} (x, y, z)")
        elif not np.allclose(h.GetSpacing(), first.GetSpacing()):
            problems.append(f"{case}: {what} {f} has spacing {h.GetSpacing()}, its image "
                            f"{os.path.basename(images[0])} {first.GetSpacing()}")
    if label is not None and headers[label].GetNumberOfComponents() != 1:
        problems.append(f"{case}: label {label} has {headers[label].GetNumberOfComponents()} components per voxel; "
                        f"a label map holds one value per voxel")
    return problems


def check_raw_dataset(raw_dataset_folder: str, completely: bool = False, num_workers: int = 4) -> None:
    """Raises one FileCheckError listing every problem of an nnU-Net raw dataset's files, reading only:
    - always: every training case's image and label grids from the headers (grid_problems), for datasets read with
      SimpleITK (nnU-Net's reader for .nii.gz, .nrrd, .mha, .gipl); other formats are left to nnU-Net's checks;
    - completely=True: every image and label of imagesTr/labelsTr (and imagesTs) read completely
      (incomplete_reason), so a truncated or corrupt file is named before it is fingerprinted or trained on."""
    from batchgenerators.utilities.file_and_folder_operations import isdir, join, load_json, subfiles
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    dataset_json = load_json(join(raw_dataset_folder, "dataset.json"))
    dataset: Mapping[str, dict] = get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json)
    problems: List[str] = []
    try:  # nnU-Net's choice by file ending (an example file would be read completely, and could be the bad one)
        reader = determine_reader_writer_from_dataset_json(dataset_json, verbose=False)
    except RuntimeError:
        reader = None  # no reader for this file ending: nnU-Net's own steps say so
    incomplete: Dict[str, str] = {}
    if completely:
        files = [f for v in dataset.values() for f in list(v["images"]) + [v["label"]] if os.path.isfile(f)]
        if isdir(join(raw_dataset_folder, "imagesTs")):
            files += subfiles(join(raw_dataset_folder, "imagesTs"), suffix=dataset_json["file_ending"])
        incomplete = check_files_complete(files, num_workers)
        problems += [f"{f}: {reason}" for f, reason in incomplete.items()]
    if reader is SimpleITKIO:  # the grids of the cases whose files are complete (or not read completely)
        cases = [(c, v) for c, v in dataset.items() if not incomplete.keys() & {*v["images"], v["label"]}]
        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            for found in pool.map(lambda item: grid_problems(item[0], item[1]["images"], item[1]["label"]), cases):
                problems += found
    if problems:
        raise FileCheckError(f"{raw_dataset_folder}: {len(problems)} problem(s) with the raw data, nothing was "
                             f"written:\n  " + "\n  ".join(problems) +
                             "\nFix or replace each named file (a cut-off or corrupt file: copy or convert it again "
                             "from its source; a label on another grid: fix the pairing or resample the label to its "
                             "image's grid) and rerun.")
