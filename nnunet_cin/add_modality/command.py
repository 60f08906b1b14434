"""nnunet-cin add-modality: a trained conditional model gains a modality; the modalities it had keep their predictions.

    nnunet-cin add-modality -i MODEL_FOLDER -d DATASET -m NEW_NAME -o NEW_MODEL_FOLDER [-f FOLDS] [--unlabeled]
        [--adapt rows|rows+decoder|adapters] [--epochs N] [--iterations-per-epoch N] [--init closest|mean|MODALITY]
        [--seed N] [-device cpu|cuda]

1. Checks (nnunet_cin.add_modality.inputs), then reads the new cases: normalization, intensity statistics and
   signature of the new modality from its own cases (nnunet_cin.add_modality.analysis). Nothing is written before.
2. NEW_MODEL_FOLDER.partial is written aside and renamed to NEW_MODEL_FOLDER when everything is done; a run that
   stops leaves the .partial folder, which the next run replaces. Inside it, a private nnU-Net folder tree (.work):
   the new cases preprocessed with the model's plans (its spacing, patch and network; the new modality's
   normalization), then, per fold of the model, nnU-Net's training of the new CIN rows (and, with --adapt, the new
   modality's decoder rows and residual adapters: nnunet_cin.add_modality.analysis.ADAPT) by the model's own trainer
   (nnunet_cin.add_modality.trainer), nnU-Net's sliding-window validation on the new cases (labelled only). The
   adaptation trains on fold "all" (every new case), so that "validation" and its pseudo-Dice are measured on the
   cases it trained on: a check that it fits, not an estimate for unseen cases (predict held-out cases and evaluate
   them with nnUNetv2_evaluate_cin for that).
3. Per fold, fold_X/checkpoint_final.pth: the model's checkpoint with the extended weights and plans, written only
   after every tensor of the model was found bitwise unchanged and every CIN tensor equal on the old rows
   (nnunet_cin.add_modality.rows.unchanged_except_new_rows); fold_X/add_modality.json (what was done), the
   adaptation's training log, progress.png and validation/. Then plans.json and dataset.json (the model's, extended).
The trained model folder, its dataset, plans and splits and the new raw dataset are only read.
"""
import argparse
import hashlib
import os
import shutil
import sys
import time
from contextlib import contextmanager
from typing import Optional

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join, maybe_mkdir_p, save_json

from nnunet_cin.add_modality.analysis import (ADAPT, DEFAULT_ADAPT, ModalityAnalysis, analyze_new_modality,
                                              extended_dataset_json, extended_plans, initial_rows)
from nnunet_cin.add_modality.inputs import CLOSEST, AddModalityError, Request, check_request
from nnunet_cin.add_modality.rows import MEAN as MEAN_ROW
from nnunet_cin.add_modality.rows import (attach_new_rows, cin_tensor_names, extended_state_dict,
                                          unchanged_except_new_rows)
from nnunet_cin.add_modality.trainer import NEW_ROWS_LR_FACTOR, Adaptation, adaptation_trainer
from nnunet_cin.plans import CINPlans

WORK = ".work"
PARTIAL = ".partial"
DEFAULT_EPOCHS, DEFAULT_ITERATIONS, DEFAULT_VAL_ITERATIONS = 20, 50, 5
FOLD_FILES_KEPT = ("training_log_", "progress", "debug.json", "validation")


@contextmanager
def nnunet_folders(preprocessed: str, results: str):
    """nnU-Net's trainer reads nnUNet_preprocessed and nnUNet_results from the environment when it needs them: point
    them at the private tree while the adaptation runs, and restore them afterwards."""
    names = {"nnUNet_preprocessed": preprocessed, "nnUNet_results": results}
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def adaptation_dataset_json(request: Request) -> dict:
    """The dataset.json nnU-Net's trainer gets: the model's labels and channels, the new dataset's file ending, and
    modality rules under which every new case is the new modality (and the model's modalities keep their index)."""
    return {"channel_names": request.model_dataset_json["channel_names"],
            "labels": request.model_dataset_json["labels"], "numTraining": len(request.cases),
            "file_ending": request.dataset_json["file_ending"],
            "modalities": request.modalities + [request.new], "modality_patterns": {},
            "case_modalities": {c: request.new for c in request.cases}}


def preprocess(request: Request, plans: dict, dataset_json: dict, preprocessed_base: str) -> None:
    """The new cases, preprocessed as nnUNetv2_plan_and_preprocess_cin would with the extended plans (one
    configuration: the model's), into the private tree; gt_segmentations for nnU-Net's validation."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_cin.add_modality.preprocessing import AdaptationPreprocessor

    pm = PlansManager(plans)
    cm = pm.get_configuration(request.configuration)
    folder = join(preprocessed_base, cm.data_identifier)
    maybe_mkdir_p(folder)
    save_json(plans, join(preprocessed_base, plans["plans_name"] + ".json"), sort_keys=False)
    save_json(dataset_json, join(preprocessed_base, "dataset.json"), sort_keys=False)
    preprocessor = AdaptationPreprocessor(verbose=False)
    for case, files in sorted(request.cases.items()):
        preprocessor.run_case_save(join(folder, case), files["images"], files["label"], pm, cm, dataset_json)
    if request.labelled:
        gt = join(preprocessed_base, "gt_segmentations")
        maybe_mkdir_p(gt)
        for case, files in request.cases.items():
            shutil.copy(files["label"], join(gt, case + dataset_json["file_ending"]))


def _sha256(file: str) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _train_fold(request: Request, plans: dict, dataset_json: dict, adaptation: Adaptation, device: torch.device,
                trainer_base: Optional[type]):
    """nnU-Net's training of the new rows of one fold (fold "all" of the new cases), and its final validation.
    Returns the trainer (its output folder holds the log and validation; exported_weights the network)."""
    trainer_class = adaptation_trainer(request.trainer_class, adaptation, trainer_base)
    trainer = trainer_class(plans=dict(plans, continue_training=False), configuration=request.configuration,
                            fold="all", dataset_json=dataset_json, device=device)
    trainer.run_training()
    trainer.perform_actual_validation(False)
    return trainer


def export_fold(original: dict, weights: dict, problems: list, plans: dict, record: dict, folder: str) -> None:
    """fold_X/checkpoint_final.pth of the extended model: the model's checkpoint `original` with `weights` and the
    extended plans; nothing is written when `problems` lists tensors that differ from the model's outside the new
    rows."""
    if problems:
        raise RuntimeError(f"{record['model_checkpoint']}: the trained network differs from the model outside the new "
                           f"rows ({len(problems)} tensors, e.g. {problems[:3]}): this is a bug of add-modality; "
                           f"nothing was exported")
    checkpoint = dict(original)
    checkpoint["network_weights"] = weights
    checkpoint["init_args"] = dict(original.get("init_args") or {}, plans=plans)
    if "modalities" in checkpoint:
        checkpoint["modalities"] = CINPlans(plans).modalities
    # the model's optimizer state: its CIN momentum buffers have the old shape, and it continues nothing
    checkpoint["optimizer_state"] = checkpoint["grad_scaler_state"] = None
    checkpoint["added_modality"] = {k: record[k] for k in ("modality", "init", "labelled", "cases", "adapt")}
    maybe_mkdir_p(folder)
    torch.save(checkpoint, join(folder, "checkpoint_final.pth"))
    save_json(record, join(folder, "add_modality.json"), sort_keys=False)


def add_modality(request: Request, epochs: int = DEFAULT_EPOCHS, iterations_per_epoch: int = DEFAULT_ITERATIONS,
                 val_iterations_per_epoch: int = DEFAULT_VAL_ITERATIONS, device: torch.device = torch.device("cpu"),
                 seed: Optional[int] = None, initial_lr: Optional[float] = None, trainer_base: Optional[type] = None,
                 analysis: Optional[ModalityAnalysis] = None, adapt: str = DEFAULT_ADAPT) -> str:
    """Write the extended model folder request.output (see the module docstring); returns it. `initial_lr` None:
    NEW_ROWS_LR_FACTOR x the model trainer's (nnunet_cin.add_modality.trainer). `trainer_base` (benchmarks): another
    adaptation mixin than the default."""
    from nnunet_cin.training.seeding import SEED_ENV

    started = time.time()
    analysis = analysis or analyze_new_modality(request)
    init, why = initial_rows(request, analysis)
    print(f'add-modality: "{request.new}" from {len(request.cases)} {"labelled" if request.labelled else "unlabelled"}'
          f' case(s) of {request.dataset_folder}'
          + (f" (left out, another modality by its rules: {', '.join(request.skipped)})" if request.skipped else ""))
    print(f"  normalization {analysis.scheme} (statistics from the {analysis.statistics_from}); new rows start from "
          f"{'the mean row' if init == MEAN_ROW else 'the rows of ' + init}: {why}; adapts: {adapt}")
    if not request.labelled:
        print("  --unlabeled is experimental: on the benchmark's T2 it did not beat the untrained initial rows "
              "(see nnunet-cin add-modality --help)")
    provenance = {"dataset": request.dataset_folder, "cases": sorted(request.cases), "labelled": request.labelled,
                  "statistics_from": analysis.statistics_from, "from_model": request.model_folder, "adapt": adapt}
    plans = extended_plans(request, analysis, provenance, adapt)
    dataset_json = extended_dataset_json(request, analysis)
    init_index = MEAN_ROW if init == MEAN_ROW else request.modalities.index(init)

    partial = request.output + PARTIAL
    if os.path.exists(partial):
        print(f"  removing {partial}, left by a run that did not finish")
        shutil.rmtree(partial)
    work = join(partial, WORK)
    private_plans = dict(plans, dataset_name=os.path.basename(request.dataset_folder.rstrip(os.sep)) or "new")
    private_dataset_json = adaptation_dataset_json(request)
    saved_seed = os.environ.get(SEED_ENV)
    if seed is not None:
        os.environ[SEED_ENV] = str(seed)
    try:
        with nnunet_folders(join(work, "preprocessed"), join(work, "results")):
            base = join(work, "preprocessed", private_plans["dataset_name"])
            preprocess(request, private_plans, private_dataset_json, base)
            save_json({"add_modality": {"modality": request.new, "case_features": analysis.case_features}},
                      join(base, "dataset_fingerprint.json"))
            for fold in request.folds:
                fold_started = time.time()
                adaptation = Adaptation(request.checkpoint(fold), len(request.modalities), init_index,
                                        request.labelled, epochs, iterations_per_epoch, val_iterations_per_epoch,
                                        initial_lr)
                folder = join(partial, f"fold_{fold}")
                record = {"modality": request.new, "model_checkpoint": request.checkpoint(fold),
                          "model_checkpoint_sha256": _sha256(request.checkpoint(fold)),
                          "dataset": request.dataset_folder, "cases": sorted(request.cases),
                          "labelled": request.labelled, "init": init, "init_reason": why, "adapt": adapt,
                          "epochs": epochs,
                          "iterations_per_epoch": iterations_per_epoch, "seed": seed,
                          "normalization": analysis.scheme, "statistics_from": analysis.statistics_from}
                original = torch.load(request.checkpoint(fold), map_location="cpu", weights_only=False)
                if epochs > 0:
                    trainer = _train_fold(request, private_plans, private_dataset_json, adaptation, device,
                                          trainer_base)
                    weights = trainer.exported_weights()
                    problems = trainer.changed_outside_new_rows(original["network_weights"], weights)
                    record["trained_parameters"] = int(trainer.trained_parameters)  # the new modality's own
                    _keep_logs(trainer.output_folder, folder)
                else:  # the initial rows, untrained
                    weights, cin_keys, added = _untrained_weights(request, plans, original, init_index)
                    problems = unchanged_except_new_rows(original["network_weights"], weights, cin_keys)
                    record["trained_parameters"] = 0
                record["added_parameters"] = record["trained_parameters"] or added
                record["seconds"] = round(time.time() - fold_started, 1)
                export_fold(original, weights, problems, plans, record, folder)
                print(f"  fold {fold}: {join(request.output, f'fold_{fold}', 'checkpoint_final.pth')} "
                      f"({record['seconds']} s; {record['added_parameters']} parameters added for {request.new})")
        save_json(plans, join(partial, "plans.json"), sort_keys=False)
        save_json(dataset_json, join(partial, "dataset.json"), sort_keys=False)
        if isfile(join(request.model_folder, "dataset_fingerprint.json")):
            shutil.copy(join(request.model_folder, "dataset_fingerprint.json"), partial)
        shutil.rmtree(work)
    finally:
        if seed is not None:
            if saved_seed is None:
                os.environ.pop(SEED_ENV, None)
            else:
                os.environ[SEED_ENV] = saved_seed
    os.replace(partial, request.output)
    print(f'add-modality: wrote {request.output} ({time.time() - started:.0f} s). The model\'s modalities '
          f'{request.modalities} predict exactly as before; predict the new one with\n'
          f'  nnUNetv2_predict_cin_from_modelfolder -i INPUT -o OUTPUT -m {request.output} --modality {request.new}')
    return request.output


def _keep_logs(trainer_folder: str, folder: str) -> None:
    maybe_mkdir_p(folder)
    for name in os.listdir(trainer_folder):
        if name.startswith(FOLD_FILES_KEPT):
            shutil.move(join(trainer_folder, name), join(folder, name))


def _untrained_weights(request: Request, plans: dict, original: dict, init_index) -> tuple:
    """--epochs 0: (the model's weights with the initial rows appended, the CIN tensors' keys, the number of the new
    modality's parameters) of the extended network."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(request.configuration)
    network = request.trainer_class.build_network_architecture(
        pm, cm, determine_num_input_channels(pm, cm, request.model_dataset_json),
        pm.get_label_manager(request.model_dataset_json).num_segmentation_heads, True)
    weights = extended_state_dict(original["network_weights"], network, init_index)
    network.load_state_dict(weights)
    added = sum(p.numel() for p in attach_new_rows(network, original["network_weights"]))
    return weights, cin_tensor_names(network), added


# ------------------------------------------------------------------------------------------- command line (cli.py)
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", required=True, metavar="MODEL_FOLDER",
                        help="the trained model folder (plans.json, dataset.json, fold_X/checkpoint_final.pth), as "
                             "for nnUNetv2_predict_cin_from_modelfolder; only read")
    parser.add_argument("-d", required=True, metavar="DATASET",
                        help="the new modality's cases: an nnU-Net raw dataset (id or name under nnUNet_raw, or its "
                             "folder) with imagesTr and labelsTr (imagesTr alone with --unlabeled)")
    parser.add_argument("-m", required=True, metavar="NEW_NAME", help="the new modality's name, e.g. T2")
    parser.add_argument("-o", required=True, metavar="NEW_MODEL_FOLDER", help="the extended model folder (must not "
                                                                              "exist)")
    parser.add_argument("-f", nargs="+", default=None, metavar="FOLD",
                        help="the model's folds to extend. Default: every fold_X with a checkpoint_final.pth")
    parser.add_argument("--unlabeled", action="store_true",
                        help="EXPERIMENTAL, off by default: adapt the new rows from the images alone (entropy and "
                             "mirror consistency of the predictions); labelsTr is not read. Not shown to help: on "
                             "the benchmark's T2 (bench_add_modality.py, k = 1, one seed, 6 test cases) it scored "
                             "0.003 mean Dice against 0.007 for the untrained closest rows (paired difference "
                             "-0.004 [-0.008, -0.002])")
    parser.add_argument("--adapt", default=DEFAULT_ADAPT, choices=ADAPT,
                        help="what the new modality gets of its own: its CIN rows in the encoder (rows); also in the "
                             "decoder's norms (rows+decoder); also a residual 1x1 adapter after every norm (adapters; "
                             "conditional U-Nets). The old modalities compute bitwise what they computed before in "
                             f"each case. Default: {DEFAULT_ADAPT} (the others are not measured yet against it on "
                             f"the benchmark: see the documentation)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"epochs of the adaptation (0: the initial rows, untrained). Default: {DEFAULT_EPOCHS}")
    parser.add_argument("--iterations-per-epoch", type=int, default=DEFAULT_ITERATIONS,
                        help=f"training iterations per epoch. Default: {DEFAULT_ITERATIONS}")
    parser.add_argument("--val-iterations-per-epoch", type=int, default=DEFAULT_VAL_ITERATIONS,
                        help=f"validation iterations per epoch (pseudo-Dice, on the new cases it trains on: a fit check, "
                             f"not held out). Default: {DEFAULT_VAL_ITERATIONS}")
    parser.add_argument("--init", default=CLOSEST, metavar="closest|mean|MODALITY",
                        help="where the new rows start: the rows of the model's modality closest to the new cases "
                             "by signature (default), the mean of the model's rows, or a modality's rows")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"initial learning rate of the new rows. Default: {NEW_ROWS_LR_FACTOR:g}x the model "
                             f"trainer's (nnU-Net's SGD: 0.1): few parameters, a short run")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the adaptation (as nnUNet_cin_seed). Default: $nnUNet_cin_seed, else unseeded")
    parser.add_argument("-device", default="cuda", choices=("cpu", "cuda", "mps"),
                        help="Default: cuda (the GPU; select it with CUDA_VISIBLE_DEVICES)")


def run(args) -> int:
    """`nnunet-cin add-modality`: a request that cannot be served is one message on stderr (exit code 2), nothing
    written."""
    try:
        if args.epochs < 0 or args.iterations_per_epoch < 1 or args.val_iterations_per_epoch < 1:
            raise AddModalityError("--epochs must be >= 0, --iterations-per-epoch and --val-iterations-per-epoch "
                                   ">= 1")
        request = check_request(args.i, args.d, args.m, args.o, args.f, args.unlabeled, args.init)
        analysis = analyze_new_modality(request)
    except AddModalityError as e:
        print(f"nnunet-cin add-modality: error: {e}", file=sys.stderr)
        return 2
    try:
        add_modality(request, args.epochs, args.iterations_per_epoch, args.val_iterations_per_epoch,
                     _device(args.device), args.seed, args.lr, analysis=analysis, adapt=args.adapt)
    except AddModalityError as e:  # (--adapt that the model's network cannot take: before anything is written)
        print(f"nnunet-cin add-modality: error: {e}", file=sys.stderr)
        return 2
    return 0


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("nnunet-cin add-modality: error: -device cuda, but no GPU is available; use -device cpu")
    if name == "cpu":
        import multiprocessing
        torch.set_num_threads(multiprocessing.cpu_count())  # as nnU-Net's nnUNetv2_train
    return torch.device(name)

