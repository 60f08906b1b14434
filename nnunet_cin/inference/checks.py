"""What nnUNetv2_predict_cin checks before the model is loaded and before anything is written.

- the output: not the input folder nor inside it (the input is never written to; a second run would take the first
  run's predictions for new cases), not an existing file, somewhere this process can create files;
- the inputs: readable image headers, no image of more than 3 dimensions that nnU-Net would read as channels, per
  case exactly the model's channels (dataset.json "channel_names": one file CASE_XXXX per channel), and every file
  complete (nnunet_cin.io_checks: SimpleITK reads a truncated or corrupt .nii.gz without a word, zeros where the data
  is missing, and the prediction of a black slab looks like any other). The completeness check reads each file once
  more (one decompression), once per run: the command checks before loading the model and hands the checked inputs
  to the predictor (nnUNetPredictorCIN.prepare_run), which checks them itself only when it is called without them.
Every problem found is listed in one PredictionInputError, naming the file and what to do.
"""
import os
import re
import tempfile
from typing import Dict, List, Sequence, Union

import SimpleITK as sitk
from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

from nnunet_cin.io_checks import check_files_complete
from nnunet_cin.modalities import case_id_from_image_file, channel_of_image_file


class PredictionInputError(ValueError):
    """Inputs or outputs of a prediction that cannot work. The message names the files and says what to do."""


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _inside(path: str, folder: str) -> bool:
    path, folder = _real(path), _real(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_folder(output_folder: str, input_folders: Sequence[str]) -> None:
    """The output folder is not an input folder nor inside one, is no file, and files can be created there."""
    for folder in input_folders:
        if _real(output_folder) == _real(folder):
            raise PredictionInputError(
                f"-o {output_folder} is the input folder {folder}: a later run on it would take the predictions for "
                f"new cases. Choose an output folder outside {folder}")
        if _inside(output_folder, folder):
            raise PredictionInputError(
                f"-o {output_folder} is inside the input folder {folder}, which nnUNetv2_predict_cin never writes to. "
                f"Choose an output folder outside {folder}")
    if os.path.isfile(output_folder):
        raise PredictionInputError(f"-o {output_folder} is an existing file, not a folder: give the folder the "
                                   f"predictions go to (created if missing)")
    existing = _real(output_folder)
    while not os.path.isdir(existing):
        if os.path.lexists(existing):
            raise PredictionInputError(f"-o {output_folder}: {existing} is a file, so the folder cannot be created "
                                       f"there; choose another output folder")
        existing = os.path.dirname(existing)
    try:  # whether we may create files here: permissions, read-only file systems, special file systems alike
        os.rmdir(tempfile.mkdtemp(prefix=".nnunet_cin-write-test-", dir=existing))
    except OSError as e:
        raise PredictionInputError(f"-o {output_folder}: cannot write in {existing} ({e.strerror}); choose an output "
                                   f"folder you can write to") from None


def _image_size(file: str):
    """(size, components per voxel) from the image header; PredictionInputError if it cannot be read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise PredictionInputError(f"{file} cannot be read as an image ({str(e).strip().splitlines()[-1]}); replace "
                                   f"it with a readable image") from None
    return reader.GetSize(), reader.GetNumberOfComponents()


def _channels_in_file(file: str, file_ending: str, case: str, model: str, wanted: str) -> None:
    """nnU-Net's readers take the 4th dimension of an image as channels (SimpleITKIO), and vector voxels (RGB) too:
    a file holds one channel, the one its name says."""
    size, components = _image_size(file)
    channels = (size[3] if len(size) == 4 else 1) * components
    if len(size) <= 4 and channels == 1:
        return
    shape = " x ".join(map(str, size))
    what = f"a {len(size)}D image (size {shape})" if len(size) >= 4 else f"an image of {components} values per voxel"
    channel = channel_of_image_file(file, file_ending)
    raise PredictionInputError(f"{file} is {what}, but it is channel {channel:04d} of case {case} and {model}: give "
                               f"one 3D (or 2D) image per channel ({wanted})")


def check_input_dimensions(list_of_lists: List[List[str]], spatial_dims: int, configuration: str = "") -> None:
    """A 2D image given to a 3D configuration (whose network convolves across slices) is refused, naming the
    files (nnU-Net would predict it as a stack of one slice)."""
    if spatial_dims != 3:
        return
    flat = [f for files in list_of_lists for f in files if len(_image_size(f)[0]) == 2]
    if flat:
        raise PredictionInputError(
            f"{len(flat)} input image(s) are 2D, but the model's configuration {configuration or ''} is 3D: "
            + ", ".join(flat) + ". Predict 2D images with a 2d configuration of the model (-c 2d), or give 3D volumes")


def check_input_images(list_of_lists: List[List[str]], file_ending: str, channel_names: Dict[str, str],
                       dataset_json_file: str = "the model's dataset.json") -> None:
    """Every case has one file per channel of the model (CASE_0000 ... CASE_{N-1}), each one complete 2D or 3D
    image; every problem in one PredictionInputError."""
    expected = len(channel_names)
    wanted = ", ".join(f"CASE_{i:04d}{file_ending}" for i in range(expected))
    model = f"the model takes {expected} channel(s) (\"channel_names\" {dict(channel_names)} in {dataset_json_file})"
    problems, readable = [], []
    for files in list_of_lists:
        case = case_id_from_image_file(files[0], file_ending)
        indices = [channel_of_image_file(f, file_ending) for f in files]
        if None in indices or sorted(indices) != list(range(expected)):
            problems.append(f"case {case} has the file(s) {', '.join(os.path.basename(f) for f in files)}, but "
                            f"{model}: give each case exactly {wanted}")
            continue
        for f in files:
            try:
                _channels_in_file(f, file_ending, case, model, wanted)
                readable.append(f)
            except PredictionInputError as e:
                problems.append(str(e))
    problems += [f"{f} {reason}: the image would be read with zeros where its data is missing; replace it with a "
                 f"complete copy (copy or convert it again from its source)"
                 for f, reason in check_files_complete(readable).items()]
    if problems:
        head = f"{len(problems)} input problems:\n" if len(problems) > 1 else ""
        raise PredictionInputError(head + "\n".join(f"- {p}" if len(problems) > 1 else p for p in problems))


def input_lists(list_of_lists_or_source_folder: Union[str, List[List[str]]], file_ending: str) -> List[List[str]]:
    """nnU-Net's input: a folder (its CASE_XXXX files, listed as nnU-Net lists them) or one list of files per case."""
    if not isinstance(list_of_lists_or_source_folder, str):
        return list_of_lists_or_source_folder
    if not os.path.isdir(list_of_lists_or_source_folder):
        raise FileNotFoundError(f"input folder {list_of_lists_or_source_folder} does not exist")
    check_input_names(list_of_lists_or_source_folder, file_ending)
    lists = [files for files in create_lists_from_splitted_dataset_folder(list_of_lists_or_source_folder, file_ending)
             if files]
    if not lists:
        raise FileNotFoundError(f"no input images ending in _XXXX{file_ending} in {list_of_lists_or_source_folder} "
                                f"(nnU-Net's naming: CASE_0000{file_ending}, one file per channel)")
    return lists


_NNUNET_NAME = re.compile(r"^(.+)_(\d{4})$")


def check_input_names(folder: str, file_ending: str) -> None:
    """Every image file of an input folder follows nnU-Net's naming, CASE_XXXX<file_ending>: nnU-Net lists the others
    under a case cut out of their name with no file (`patient7.nii.gz`: case "pati"), and its listing would fail far
    from the cause. One PredictionInputError names each file and the name it needs."""
    bad = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(file_ending) or not os.path.isfile(os.path.join(folder, name)):
            continue
        stem = name[:-len(file_ending)]
        if _NNUNET_NAME.match(stem):
            continue
        case = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "case"
        bad.append(f"{os.path.join(folder, name)}: rename it to {case}_0000{file_ending} (channel 0 of case {case})")
    if bad:
        raise PredictionInputError(
            f"{len(bad)} input file(s) in {folder} do not follow nnU-Net's naming CASE_XXXX{file_ending} (the case "
            f"name, then the four-digit channel: one file per channel):\n" +
            "\n".join(f"- {b}" for b in bad))


def input_folders(list_of_lists_or_source_folder: Union[str, List[List[str]]]) -> List[str]:
    if isinstance(list_of_lists_or_source_folder, str):
        return [list_of_lists_or_source_folder]
    return sorted({os.path.dirname(_real(f)) for files in list_of_lists_or_source_folder for f in files})


def output_folders(output_folder_or_list_of_truncated_output_files: Union[str, None, List[str]]) -> List[str]:
    if output_folder_or_list_of_truncated_output_files is None:
        return []
    if isinstance(output_folder_or_list_of_truncated_output_files, str):
        return [output_folder_or_list_of_truncated_output_files]
    return sorted({os.path.dirname(f) or os.curdir for f in output_folder_or_list_of_truncated_output_files})


def check_prediction_inputs_and_outputs(list_of_lists_or_source_folder: Union[str, List[List[str]]],
                                        output_folder_or_list_of_truncated_output_files: Union[str, None, List[str]],
                                        dataset_json: dict, dataset_json_file: str = "the model's dataset.json"
                                        ) -> List[List[str]]:
    """All checks of this module on a prediction's arguments (nnU-Net's predict_from_files ones) and the model's
    dataset.json; returns the input lists (one list of image files per case). Writes nothing."""
    lists = input_lists(list_of_lists_or_source_folder, dataset_json["file_ending"])
    for folder in output_folders(output_folder_or_list_of_truncated_output_files):
        check_output_folder(folder, input_folders(list_of_lists_or_source_folder))
    check_input_images(lists, dataset_json["file_ending"], dataset_json["channel_names"], dataset_json_file)
    return lists
