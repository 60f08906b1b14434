"""nnUNetv2_plan_and_preprocess_cin: nnU-Net's fingerprint, planning and preprocessing, made modality-aware.

Same flags as nnUNetv2_plan_and_preprocess. The classes are ours and used directly (nnU-Net's by-name lookup only
searches its own package): CINFingerprintExtractor, the CIN planners (-pl takes nnU-Net's planner names or ours) and
CINPreprocessor. Every dataset given with -d is checked first (dataset.json modality keys, every training case's
modality, "modality_normalization", the flags, and that existing preprocessed data which this run does not
preprocess again agree with the current rules: nnunet_cin.preprocessing.drift); nothing is written before all checks
pass. The rules are built and checked against the training cases once per dataset (`check_dataset`) and handed to the
fingerprint extractor and the planner. The raw dataset is only read.
"""
import argparse
import os
import shutil
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, maybe_mkdir_p

from nnunet_cin.io_checks import FileCheckError, check_raw_dataset
from nnunet_cin.modalities import CheckedRules, ModalityError, ModalityRules

DEFAULT_NP = {"2d": 8, "3d_fullres": 4, "3d_lowres": 8}
FINGERPRINT_EXTRACTORS = ("DatasetFingerprintExtractor", "CINFingerprintExtractor")
PREPROCESSORS = ("DefaultPreprocessor", "CINPreprocessor")


class PlanError(ValueError):
    """A flag or dataset that cannot be planned; the message says what to change."""


def check_dataset(raw_dataset_folder: str) -> Tuple[CheckedRules, Dict[str, str]]:
    """Validate a raw dataset's modality rules against its training cases, and its "modality_normalization", reading
    only. Returns the checked rules (with the {case: modality} map) and {modality: normalization scheme class}.
    Raises ModalityError (naming the case or key) or PlanError."""
    dataset_json_file = join(raw_dataset_folder, "dataset.json")
    if not isfile(dataset_json_file):
        raise PlanError(f"no dataset.json in {raw_dataset_folder}")
    dataset_json = load_json(dataset_json_file)
    rules = ModalityRules.from_dataset_json(dataset_json, dataset_json_file)
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    try:
        dataset = get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json)
    except Exception as e:  # nnU-Net raises plain errors for missing folders/files
        raise PlanError(f"cannot list the training cases of {raw_dataset_folder}: {e}") from e
    if not dataset:
        raise PlanError(f"no training cases found in {raw_dataset_folder} (imagesTr/labelsTr, file_ending "
                        f"{dataset_json.get('file_ending')!r})")
    checked = CheckedRules(rules, rules.resolve_training_cases(dataset.keys()))
    from nnunet_cin.planning.planners import normalization_schemes
    return checked, normalization_schemes(rules.modalities, dataset_json, dataset_json_file)


def _num_processes(np_arg: Optional[List[int]], configurations: Sequence[str]) -> List[int]:
    if np_arg is None:
        return [DEFAULT_NP.get(c, 4) for c in configurations]
    if len(np_arg) == 1:
        return list(np_arg) * len(configurations)
    if len(np_arg) != len(configurations):
        raise PlanError(f"-np must be one number or one per configuration (-c {' '.join(configurations)}); got "
                        f"{len(np_arg)} numbers")
    return list(np_arg)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_plan_and_preprocess_cin",
        description="nnU-Net's fingerprint extraction, experiment planning and preprocessing, per modality: "
                    "intensity statistics and normalization per modality (dataset.json keys modalities, "
                    "modality_patterns, case_modalities), conditional network (CIN in the encoder) in the plans.")
    p.add_argument('-d', nargs='+', type=int, required=True, help="[REQUIRED] dataset ID(s)")
    p.add_argument('-fpe', type=str, default='DatasetFingerprintExtractor',
                   help="fingerprint extractor; always nnunet_cin's CINFingerprintExtractor (nnU-Net's plus per-"
                        "modality statistics). Accepted for compatibility: DatasetFingerprintExtractor, "
                        "CINFingerprintExtractor")
    p.add_argument('-npfp', type=int, default=8, help="processes for fingerprint extraction. Default: 8")
    p.add_argument("--verify_dataset_integrity", action="store_true",
                   help="run nnU-Net's dataset integrity check first (recommended once per dataset)")
    p.add_argument('--no_pp', action='store_true', help="only fingerprint and planning, no preprocessing")
    p.add_argument("--clean", action="store_true",
                   help="extract the fingerprint again even if a current one exists (needed after changing the data; "
                        "a fingerprint without per-modality statistics or made with other modality rules is always "
                        "extracted again)")
    p.add_argument('-pl', type=str, default='ExperimentPlanner',
                   help="planner: nnU-Net's name (ExperimentPlanner, ResEncUNetPlanner, nnUNetPlannerResEncM, "
                        "nnUNetPlannerResEncL, nnUNetPlannerResEncXL) or ours (same + 'CIN'); both plan the "
                        "conditional network. Plans: nnUNetPlansCIN, nnUNetResEncUNet[M|L|XL]PlansCIN")
    p.add_argument('-gpu_memory_target', default=None, type=float, help="[DANGER ZONE] custom GPU memory target (GB)")
    p.add_argument('-preprocessor_name', default='CINPreprocessor', type=str,
                   help="always nnunet_cin's CINPreprocessor (nnU-Net's DefaultPreprocessor plus per-modality "
                        "normalization); DefaultPreprocessor is accepted for compatibility")
    p.add_argument('-overwrite_target_spacing', default=None, nargs='+',
                   help="[DANGER ZONE] custom target spacing for 3d_fullres (three numbers)")
    p.add_argument('-overwrite_plans_name', default=None, help="custom plans identifier")
    p.add_argument('-c', default=['2d', '3d_fullres', '3d_lowres'], nargs='+',
                   help="configurations to preprocess. Default: 2d 3d_fullres 3d_lowres")
    p.add_argument('-np', type=int, nargs='+', default=None,
                   help="processes for preprocessing: one number, or one per configuration. Default: 8 for 2d, "
                        "4 for 3d_fullres, 8 for 3d_lowres")
    p.add_argument('--verbose', action='store_true', help="print a lot")
    p.add_argument('--no_pbar', action='store_true', help="no progress bars")
    return p


def _check_args(args) -> Tuple[type, Optional[List[float]], List[int]]:
    if args.fpe not in FINGERPRINT_EXTRACTORS:
        raise PlanError(f"-fpe {args.fpe}: nnUNetv2_plan_and_preprocess_cin always uses CINFingerprintExtractor; "
                        f"leave -fpe out (accepted: {', '.join(FINGERPRINT_EXTRACTORS)})")
    if args.preprocessor_name not in PREPROCESSORS:
        raise PlanError(f"-preprocessor_name {args.preprocessor_name}: nnUNetv2_plan_and_preprocess_cin always uses "
                        f"CINPreprocessor; leave the flag out")
    # our planners are used directly: nnU-Net's by-name lookup of -pl searches only its own package
    from nnunet_cin.planning.planners import PLANNERS
    if args.pl not in PLANNERS:
        raise PlanError(f"-pl {args.pl}: unknown planner; use one of {', '.join(PLANNERS)}")
    spacing = None
    if args.overwrite_target_spacing is not None:
        try:
            spacing = [float(i) for i in args.overwrite_target_spacing]
        except ValueError:
            spacing = []
        if len(spacing) != 3 or not all(s > 0 for s in spacing):
            raise PlanError(f"-overwrite_target_spacing needs three positive numbers, got "
                            f"{' '.join(args.overwrite_target_spacing)}")
    return PLANNERS[args.pl], spacing, _num_processes(args.np, args.c)


def copy_gt_segmentations(raw_dataset_folder: str, preprocessed_dataset_folder: str) -> None:
    """As nnU-Net's preprocess_dataset: the reference segmentations next to the preprocessed data (newer only)."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    dataset_json = load_json(join(raw_dataset_folder, 'dataset.json'))
    dataset = get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json)
    target = join(preprocessed_dataset_folder, 'gt_segmentations')
    maybe_mkdir_p(target)
    for k, v in dataset.items():
        out = join(target, k + dataset_json['file_ending'])
        if not isfile(out) or os.path.getmtime(v['label']) > os.path.getmtime(out):
            shutil.copy2(v['label'], out)


def plan_and_preprocess(args) -> Dict[int, str]:
    """Run everything for args.d; returns {dataset id: plans identifier}. Checks all datasets first."""
    planner_class, spacing, num_processes = _check_args(args)
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    if nnUNet_raw is None or nnUNet_preprocessed is None:
        raise PlanError("set the environment variables nnUNet_raw and nnUNet_preprocessed (see nnU-Net's "
                        "documentation, or `nnunet-cin env`)")

    # 1. check every dataset before writing anything: its rules, and that no data stay behind that the new plans
    # would not describe
    from nnunet_cin.preprocessing.drift import check_preprocessed_data
    plans_name = args.overwrite_plans_name or planner_class.default_plans_name
    names, checked = {}, {}
    for d in args.d:
        try:
            names[d] = convert_id_to_dataset_name(d)
        except RuntimeError as e:
            raise PlanError(f"-d {d}: {e}") from None
        dataset_json_file = join(nnUNet_raw, names[d], "dataset.json")
        checked[d], schemes = check_dataset(join(nnUNet_raw, names[d]))
        # image/label grids from the headers; with --verify_dataset_integrity every file read completely (io_checks)
        check_raw_dataset(join(nnUNet_raw, names[d]), completely=args.verify_dataset_integrity, num_workers=args.npfp)
        check_preprocessed_data(join(nnUNet_preprocessed, names[d]), plans_name, *checked[d], schemes,
                                [] if args.no_pp else args.c, dataset_json_file)
    if args.verify_dataset_integrity:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
        for d in args.d:
            verify_dataset_integrity(join(nnUNet_raw, names[d]), args.npfp)

    from nnunet_cin.planning.fingerprint import CINFingerprintExtractor
    from nnunet_cin.preprocessing.preprocessor import CINPreprocessor
    identifiers = {}
    for d in args.d:
        print(f"{names[d]}: fingerprint extraction (per modality)...")
        fpe = CINFingerprintExtractor(d, args.npfp, verbose=args.verbose, checked=checked[d])
        fpe.show_progress_bar = not args.no_pbar
        fpe.run(overwrite_existing=args.clean)

        print(f"{names[d]}: experiment planning ({planner_class.__name__})...")
        planner = planner_class(d, gpu_memory_target_in_gb=args.gpu_memory_target, plans_name=plans_name,
                                overwrite_target_spacing=spacing, suppress_transpose=False, checked=checked[d])
        plans = planner.plan_experiment()
        identifiers[d] = planner.plans_identifier

        if args.no_pp:
            continue
        for c, n in zip(args.c, num_processes):
            if c not in plans['configurations']:
                print(f"INFO: configuration {c} is not in plans {planner.plans_identifier} of {names[d]}. Skipping.")
                continue
            print(f"{names[d]}: preprocessing {c} (per-modality normalization)...")
            pp = CINPreprocessor(verbose=args.verbose)
            pp.show_progress_bar = not args.no_pbar
            pp.run(d, c, planner.plans_identifier, num_processes=n)
        copy_gt_segmentations(join(nnUNet_raw, names[d]), join(nnUNet_preprocessed, names[d]))
    return identifiers


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        identifiers = plan_and_preprocess(args)
    except (ModalityError, PlanError, FileCheckError) as e:
        print(f"nnUNetv2_plan_and_preprocess_cin: error: {e}", file=sys.stderr)
        return 2
    for d, ident in identifiers.items():
        print(f"Dataset {d}: plans {ident}. Train with: nnUNetv2_train {d} 3d_fullres FOLD -tr nnUNetTrainerCIN "
              f"-p {ident}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
