"""Prediction outputs that are either complete or absent, and the check that tells which ones are complete.

nnU-Net's export (`export_prediction_from_logits`, run in its export workers) writes a case's outputs in place:
CASE.npz and CASE.pkl (with --save_probabilities), then CASE<file_ending>. A run killed meanwhile leaves files that
look finished, and `--continue_prediction` (which only asks whether they exist) never predicts them again. Here:

- a prediction run writes every case into a staging folder `.partial-XXXX` inside its output folder (same file system;
  nothing there looks like a case to nnU-Net's tools, which list files of the output folder itself). The segmentation
  is written last by nnU-Net's export, through the plans' image writer: `OutputPlansManager` hands nnU-Net (and its
  workers) a writer that, once the segmentation is complete, moves the case's files into the output folder with
  `os.replace`, the segmentation last. A killed run leaves the staging folder, never a half-written output.
- `why_unfinished` says whether a case's outputs read back completely (a truncated .nii.gz reads without error in
  SimpleITK, with zeros where the data is missing: nnunet_cin.io_checks reads it to its end).

Imported by nnU-Net's spawned export workers (they unpickle the plans manager): no torch or predictor imports here.
"""
import os
import pickle
import shutil
import signal
import tempfile
import threading
import zipfile
from contextlib import contextmanager
from functools import lru_cache
from typing import List, Optional

from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_cin.inference.orphans import end_with_parent
from nnunet_cin.io_checks import NIFTI_ENDINGS, incomplete_reason

PARTIAL_PREFIX = ".partial-"
PROBABILITY_ENDINGS = (".npz", ".pkl")  # nnU-Net's --save_probabilities outputs, written before the segmentation

end_with_parent()  # this module is imported by nnU-Net's spawned workers: they end with their parent


def is_staging_folder(folder: str) -> bool:
    return os.path.basename(os.path.normpath(folder)).startswith(PARTIAL_PREFIX)


class StagingFolders:
    """Where one prediction run writes its cases until each is complete: one `.partial-XXXX` folder per output
    folder, private to the run (runs of -num_parts may share an output folder). `close()` removes them with whatever
    unfinished files they hold."""

    def __init__(self):
        self.folders = {}

    def stage(self, output_file_truncated: str) -> str:
        """The staged name of an output (nnU-Net's truncated name: the file without its ending)."""
        parent, name = os.path.split(output_file_truncated)
        parent = parent or os.curdir
        if parent not in self.folders:
            os.makedirs(parent, exist_ok=True)
            self.folders[parent] = tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=parent)
        return os.path.join(self.folders[parent], name)

    def close(self):
        for folder in self.folders.values():
            shutil.rmtree(folder, ignore_errors=True)
        self.folders = {}


def commit_case(staged_seg_file: str, file_ending: str):
    """Move a staged case (its segmentation and, if present, .npz/.pkl) into the output folder. The segmentation marks
    a finished case: an older one is removed first and the new one arrives last, so that a run killed in between
    leaves no segmentation (the case is predicted again) rather than one that does not belong to its probabilities."""
    staged_truncated = staged_seg_file[:-len(file_ending)]
    stage, name = os.path.split(staged_truncated)
    target = os.path.join(os.path.dirname(stage), name)
    with _sigterm_deferred():
        if os.path.lexists(target + file_ending):
            os.remove(target + file_ending)
        for ending in PROBABILITY_ENDINGS:
            if os.path.isfile(staged_truncated + ending):
                os.replace(staged_truncated + ending, target + ending)
        os.replace(staged_seg_file, target + file_ending)


@contextmanager
def _sigterm_deferred():
    """A SIGTERM inside this block takes effect at its end: an interrupted run (Pool.terminate ends nnU-Net's export
    workers with SIGTERM) leaves a case's outputs all moved or none. Blocking the signal would not do: a process-wide
    signal goes to any thread that does not block it (torch's), and its default action ends the whole process."""
    if threading.current_thread() is not threading.main_thread():  # handlers belong to the main thread
        yield
        return
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        if received:
            signal.raise_signal(signal.SIGTERM)


class _WritesCompleteFiles:
    """Mixed into the plans' image reader/writer: `write_seg` leaves either a complete file or none."""
    file_ending: str

    def write_seg(self, seg, output_fname: str, properties: dict) -> None:
        folder, name = os.path.split(output_fname)
        if is_staging_folder(folder):  # staged by the run: the case's other outputs are already next to it
            super().write_seg(seg, output_fname, properties)
            commit_case(output_fname, self.file_ending)
            return
        # written by someone who did not stage (predict_from_data_iterator with their own iterator): this file alone
        stage = tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=folder or os.curdir)
        try:
            super().write_seg(seg, os.path.join(stage, name), properties)
            os.replace(os.path.join(stage, name), output_fname)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


@lru_cache(maxsize=None)
def complete_file_writer(reader_writer_class: type, file_ending: str) -> type:
    """`reader_writer_class` (nnU-Net's SimpleITKIO, NibabelIO, ...) whose write_seg leaves a complete file or none."""
    return type(f"Complete{reader_writer_class.__name__}", (_WritesCompleteFiles, reader_writer_class),
                {"file_ending": file_ending, "__module__": __name__})


class OutputPlansManager(PlansManager):
    """nnU-Net's PlansManager whose image reader/writer writes complete outputs (see `complete_file_writer`). nnU-Net's
    export (in its workers, its sequential loop and predict_single_npy_array) writes through
    `plans_manager.image_reader_writer_class()`: this is the hook."""

    def __init__(self, plans: dict, file_ending: str):
        super().__init__(plans)
        self.file_ending = file_ending

    @property
    def image_reader_writer_class(self) -> type:
        return complete_file_writer(super().image_reader_writer_class, self.file_ending)


# ------------------------------------------------------------------------------------------------- reading back
def why_unreadable(path: str, reader_writer_class: Optional[type] = None) -> Optional[str]:
    """None if `path` reads back completely, else why not. Images: nnunet_cin.io_checks (a gzip stream read to its end
    with its CRC and length checked, NIfTI data as long as its header promises: SimpleITK reads a truncated NIfTI
    without complaint, zeros where data is missing); images of other formats read with `reader_writer_class`. .npz:
    every member's CRC; .pkl: unpickled."""
    try:
        if path.endswith(".npz"):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
            return None if bad is None else f"member {bad} is corrupt"
        if path.endswith(".pkl"):
            with open(path, "rb") as f:
                pickle.load(f)
            return None
        reason = incomplete_reason(path)
        if reason is None and not path.endswith(NIFTI_ENDINGS) and reader_writer_class is not None:
            reader_writer_class().read_seg(path)  # a format io_checks does not know: its reader must manage
        return reason
    except Exception as e:  # whatever the reader raises: the file does not read back
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'unreadable'}"


def why_unfinished(output_file_truncated: str, file_ending: str, save_probabilities: bool,
                   reader_writer_class: Optional[type] = None) -> Optional[str]:
    """None if every output of a case (CASE<file_ending>, and CASE.npz/.pkl with save_probabilities) exists and reads
    back completely; else what is wrong, naming the file."""
    files: List[str] = [output_file_truncated + file_ending]
    if save_probabilities:
        files += [output_file_truncated + e for e in PROBABILITY_ENDINGS]
    for f in files:
        if not os.path.isfile(f):
            return f"{f} is missing"
        problem = why_unreadable(f, reader_writer_class)
        if problem is not None:
            return f"{f} cannot be read completely ({problem})"
    return None
