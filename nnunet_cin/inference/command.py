"""The prediction commands: nnUNetv2_predict_cin and nnUNetv2_predict_cin_from_modelfolder (argument parsing and
entry points; setup.py's console scripts reach them through nnunet_cin.commands).

    nnUNetv2_predict_cin -i INPUT -o OUTPUT -d DATASET -c 3d_fullres [-f 0 1 ...] [-m CT] [every nnUNetv2_predict flag]
    nnUNetv2_predict_cin_from_modelfolder -i INPUT -o OUTPUT -m MODEL_FOLDER [--modality CT] [...]

Why a module of its own: a command's job is the order of things and its errors, not prediction. Each run: the model
folder, the inputs and the output are checked before the model is loaded (nnunet_cin.inference.checks); the model is
loaded into nnUNetPredictorCIN (nnunet_cin.inference.predictor); every case's modality is decided once
(`prepare_run`), and a user error up to here ends the command with exit code 2 and a message, before the output
folder exists; then the predictor predicts with those decisions. All of it inside `sigterm_ends_run`
(nnunet_cin.inference.signals: SIGTERM ends the run with its workers) and `forked_children_end_with_this_process`
(nnunet_cin.inference.orphans: SIGKILL too).
"""
import argparse
import multiprocessing
import os
import sys
from typing import Optional, Sequence

import torch
from batchgenerators.utilities.file_and_folder_operations import isdir, join, load_json, subdirs

from nnunet_cin.inference.checks import check_prediction_inputs_and_outputs
from nnunet_cin.inference.modality_check import AUTO
from nnunet_cin.inference.orphans import forked_children_end_with_this_process
from nnunet_cin.inference.predictor import check_model_folder, nnUNetPredictorCIN
from nnunet_cin.inference.signals import sigterm_ends_run
from nnunet_cin.modalities import ModalityError


def _add_common_arguments(parser: argparse.ArgumentParser, default_npp: int, default_nps: int):
    parser.add_argument('-i', type=str, required=True,
                        help='input folder (nnU-Net naming: CASE_0000.nii.gz ...; file ending as in training)')
    parser.add_argument('-o', type=str, required=True,
                        help='output folder; created if missing. Predictions are named like their cases')
    parser.add_argument('-f', nargs='+', type=str, required=False, default=(0, 1, 2, 3, 4),
                        help='folds of the trained model to use (several: their predictions are averaged). '
                             'Default: 0 1 2 3 4')
    parser.add_argument('-step_size', type=float, required=False, default=0.5,
                        help='sliding window step size (fraction of the patch size). Default: 0.5')
    parser.add_argument('--disable_tta', action='store_true', required=False, default=False,
                        help='disable test time augmentation (mirroring). Faster, less accurate')
    parser.add_argument('--verbose', action='store_true', help='talk a lot')
    parser.add_argument('--save_probabilities', action='store_true',
                        help='also export class probabilities (.npz/.pkl), needed by nnUNetv2_ensemble')
    parser.add_argument('--continue_prediction', '--c', action='store_true',
                        help='continue an aborted prediction (existing outputs are not predicted again)')
    parser.add_argument('-chk', type=str, required=False, default='checkpoint_final.pth',
                        help='checkpoint to use. Default: checkpoint_final.pth')
    parser.add_argument('-npp', type=int, required=False, default=default_npp,
                        help=f'processes for preprocessing. Default: {default_npp} (-npp 0 -nps 0: no '
                             f'multiprocessing at all)')
    parser.add_argument('-nps', type=int, required=False, default=default_nps,
                        help=f'processes for segmentation export. Default: {default_nps}')
    parser.add_argument('-prev_stage_predictions', type=str, required=False, default=None,
                        help='folder with the predictions of the previous stage (cascade)')
    parser.add_argument('-device', type=str, default='cuda', required=False,
                        help="'cuda' (GPU), 'cpu' or 'mps'. Select the GPU with CUDA_VISIBLE_DEVICES. Default: cuda")
    parser.add_argument('--disable_progress_bar', action='store_true', required=False, default=False,
                        help='no progress bar (non-interactive jobs)')
    parser.add_argument('--not_on_device', action='store_true', required=False, default=False,
                        help='keep the result arrays off the GPU (very large cases)')


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name) or default)
    except ValueError:
        return default


def _device(name: str) -> torch.device:
    if name not in ('cpu', 'cuda', 'mps'):
        raise ValueError(f"-device must be cpu, cuda or mps, got {name!r}")
    if name == 'cpu':
        torch.set_num_threads(multiprocessing.cpu_count())  # as nnU-Net
        return torch.device('cpu')
    if name == 'cuda':
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        return torch.device('cuda')
    return torch.device('mps')


def _add_modality_check_arguments(parser: argparse.ArgumentParser):
    parser.add_argument('--skip-modality-check', action='store_true',
                        help="do not check the input images (by default a case whose image clearly looks like "
                             "another modality than it was given, by the modality signatures of the model's plans, or "
                             "that is not in Hounsfield units for a modality that needs them, stops the run before "
                             "anything is written). -m auto still decides by the check")


def _run(parser: argparse.ArgumentParser, args, model_folder: str, modality_override: Optional[str],
         num_parts: int = 1, part_id: int = 0, modality_flag: str = '-m'):
    """Load the model, decide every case's modality, and only then create the output folder and predict."""
    if not 0 <= part_id < num_parts:
        parser.error(f"-part_id must be in 0..{num_parts - 1} (-num_parts {num_parts}), got {part_id}")
    sequential = args.nps == 0 and args.npp == 0
    try:
        device = _device(args.device)
        folds = [f if f == 'all' else int(f) for f in args.f]
        # before the model is loaded, and writing nothing: the model folder, the inputs and the output
        check_model_folder(model_folder, folds, args.chk)
        dataset_json_file = join(model_folder, 'dataset.json')
        lists = check_prediction_inputs_and_outputs(args.i, args.o, load_json(dataset_json_file), dataset_json_file)
        predictor = nnUNetPredictorCIN(tile_step_size=args.step_size, use_gaussian=True,
                                       use_mirroring=not args.disable_tta,
                                       perform_everything_on_device=not args.not_on_device, device=device,
                                       verbose=args.verbose, verbose_preprocessing=args.verbose,
                                       allow_tqdm=not args.disable_progress_bar)
        predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint_name=args.chk)
        predictor.modality_override = modality_override
        predictor.modality_flag = modality_flag
        predictor.check_modalities = not args.skip_modality_check
        if args.skip_modality_check and modality_override == AUTO:
            print(f"WARNING: {modality_flag} auto recognises each case by the modality check, so "
                  f"--skip-modality-check cannot turn it off: the signatures and the Hounsfield-unit check still "
                  f"decide each case's modality (give {modality_flag} NAME to predict without the check)",
                  file=sys.stderr, flush=True)
        inputs = args.i
        if sequential and num_parts > 1:  # nnU-Net's sequential prediction has no parts: give it this part's cases
            inputs = lists = lists[part_id::num_parts]
            part_id, num_parts = 0, 1
        # decide now, once: an error stops the run before the output folder or any file is created
        predictor.prepare_run(inputs, args.o, part_id, num_parts, checked_lists=lists)
    except (ModalityError, FileNotFoundError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except RuntimeError as e:
        if "Could not find requested nnunet trainer" not in str(e):
            raise
        parser.exit(2, f"{parser.prog}: error: {e}\nnnunet-cin's trainers: run `eval \"$(nnunet-cin env)\"` to set "
                       f"nnUNet_extTrainer\n")
    os.makedirs(args.o, exist_ok=True)
    if sequential:
        print("Running in non-multiprocessing mode")
        predictor.predict_from_files_sequential(inputs, args.o, save_probabilities=args.save_probabilities,
                                                overwrite=not args.continue_prediction,
                                                folder_with_segs_from_prev_stage=args.prev_stage_predictions)
    else:
        predictor.predict_from_files(inputs, args.o, save_probabilities=args.save_probabilities,
                                     overwrite=not args.continue_prediction,
                                     num_processes_preprocessing=max(1, args.npp),
                                     num_processes_segmentation_export=max(1, args.nps),
                                     folder_with_segs_from_prev_stage=args.prev_stage_predictions,
                                     num_parts=num_parts, part_id=part_id)
    return predictor


def predict_entry_point(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_predict_cin",
        description="nnUNetv2_predict for nnunet-cin models: every case is preprocessed with its modality's "
                    "normalization and predicted by the network conditioned on its modality. Without -m, each "
                    "case's modality comes from the rules of the model's dataset.json.")
    parser.add_argument('-d', type=str, required=True, help='dataset name or id')
    parser.add_argument('-p', type=str, required=False, default='nnUNetPlansCIN',
                        help='plans identifier. Default: nnUNetPlansCIN')
    parser.add_argument('-tr', type=str, required=False, default='nnUNetTrainerCIN',
                        help='trainer class used for training. Default: nnUNetTrainerCIN')
    parser.add_argument('-c', type=str, required=True, help='configuration, e.g. 3d_fullres')
    parser.add_argument('-m', '--modality', type=str, default=None,
                        help="modality of ALL input cases (e.g. CT), or 'auto': each case as the modality its image "
                             "looks like (the modality signatures of the model's plans). Default: each case's "
                             "modality from the model's dataset.json rules")
    _add_modality_check_arguments(parser)
    _add_common_arguments(parser, _env_int('nnUNet_npp', 3), _env_int('nnUNet_nps', 3))
    parser.add_argument('-num_parts', type=int, required=False, default=1,
                        help='number of separate nnUNetv2_predict_cin calls sharing the inputs. Default: 1')
    parser.add_argument('-part_id', type=int, required=False, default=0,
                        help='which of the -num_parts calls this is (0 .. num_parts - 1). Default: 0')
    args = parser.parse_args(argv)
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    try:
        model_folder = get_output_folder(args.d, args.tr, args.p, args.c)
    except RuntimeError as e:  # unknown dataset, or nnUNet_results not set
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if not isdir(model_folder):
        parent = os.path.dirname(model_folder)
        trained = sorted(subdirs(parent, join=False)) if isdir(parent) else []
        parser.exit(2, f"{parser.prog}: error: no trained model at {model_folder} (-tr {args.tr} -p {args.p} -c "
                       f"{args.c}). Models of this dataset: {', '.join(trained) or 'none'} "
                       f"(TRAINER__PLANS__CONFIGURATION)\n")
    with sigterm_ends_run(), forked_children_end_with_this_process():
        _run(parser, args, model_folder, args.modality, args.num_parts, args.part_id)


def predict_from_modelfolder_entry_point(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_predict_cin_from_modelfolder",
        description="nnUNetv2_predict_from_modelfolder for nnunet-cin models. As in nnU-Net, -m is the model folder; "
                    "the modality of all inputs is --modality.")
    parser.add_argument('-m', type=str, required=True,
                        help='trained model folder (with fold_X subfolders, dataset.json and plans.json)')
    parser.add_argument('--modality', type=str, default=None,
                        help="modality of ALL input cases (e.g. CT), or 'auto': each case as the modality its image "
                             "looks like (the modality signatures of the model's plans). Default: each case's "
                             "modality from the model's dataset.json rules")
    _add_modality_check_arguments(parser)
    _add_common_arguments(parser, 3, 3)
    args = parser.parse_args(argv)
    with sigterm_ends_run(), forked_children_end_with_this_process():
        _run(parser, args, args.m, args.modality, modality_flag='--modality')


if __name__ == '__main__':
    predict_entry_point(sys.argv[1:])
