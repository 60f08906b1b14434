"""Everything a comparison needs before its first training: nnU-Net's environment, the dataset (generated with
--synthetic), its plans both ways (ours and nnU-Net's plain ones, as the arms need), ONE split file for every arm, and
trainers that nnU-Net finds. Each step is skipped when its result is already there."""
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from nnunet_cin.experiments.nnunet_runs import run_logged

CIN_PLANS, NNUNET_PLANS = "nnUNetPlansCIN", "nnUNetPlans"  # what the two planning commands write by default
SPLITS_FILE = "splits_final.json"


def log(text: str):
    print(text, flush=True)


def comparison_environment() -> dict:
    """os.environ plus our trainers on nnUNet_extTrainer (after the user's own folders) and nnU-Net's folders
    checked."""
    from nnunet_cin.environment import with_our_trainers

    env = with_our_trainers(os.environ)
    missing = [n for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results") if not env.get(n)]
    if missing:
        raise RuntimeError(f"set {', '.join(missing)} as for nnU-Net (or: eval \"$(nnunet-cin env --root DIR)\")")
    return env


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def dataset_name(dataset: str, env: Mapping[str, str]) -> Optional[str]:
    """DatasetXXX_Name for an id or name, looked up in nnUNet_preprocessed and nnUNet_raw; None if absent."""
    if re.fullmatch(r"Dataset\d{3}_.+", dataset):
        return dataset
    if not dataset.isdigit():
        raise ValueError(f"-d {dataset}: expected a dataset id (e.g. 999) or a name like Dataset999_SyntheticHeart")
    prefix = f"Dataset{int(dataset):03d}_"
    found = set()
    for root in (env["nnUNet_preprocessed"], env["nnUNet_raw"]):
        if Path(root).is_dir():
            found.update(p.name for p in Path(root).iterdir() if p.name.startswith(prefix) and p.is_dir())
    if len(found) > 1:
        raise ValueError(f"-d {dataset}: several datasets have this id: {sorted(found)}; pass the full name")
    return found.pop() if found else None


def ensure_raw_dataset(dataset: str, env: dict, synthetic: Optional[int], shape: Sequence[int], seed: int,
                       variant: str = "basic") -> str:
    """The dataset's name; generates the built-in synthetic dataset (--synthetic) when the dataset is missing."""
    name = dataset_name(str(dataset), env)
    if name is None or not (Path(env["nnUNet_raw"]) / name / "dataset.json").is_file() and \
            not (Path(env["nnUNet_preprocessed"]) / name / "dataset.json").is_file():
        if not synthetic:
            raise FileNotFoundError(f"dataset {dataset} is in neither nnUNet_raw ({env['nnUNet_raw']}) nor "
                                    f"nnUNet_preprocessed ({env['nnUNet_preprocessed']}); convert it first, or use "
                                    f"--synthetic N to generate the built-in synthetic two-modality hearts")
        if not str(dataset).isdigit():
            raise ValueError("--synthetic needs a numeric -d (the new dataset's id)")
        from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset

        log(f"generating the synthetic dataset: {synthetic} training cases per modality (CT, MR), shape "
            f"{tuple(shape)}, variant {variant}")
        name = write_nnunet_dataset(env["nnUNet_raw"], int(dataset), "SyntheticHeart",
                                    {"CT": synthetic, "MR": synthetic}, shape=tuple(shape), seed=seed,
                                    variant=variant).name
    return name


def load_dataset_json(name: str, env: Mapping[str, str]) -> Tuple[dict, Path]:
    """The dataset's dataset.json (nnUNet_preprocessed's copy when planned, else nnUNet_raw's) and its path."""
    dataset_json_file = Path(env["nnUNet_preprocessed"]) / name / "dataset.json"
    if not dataset_json_file.is_file():
        dataset_json_file = Path(env["nnUNet_raw"]) / name / "dataset.json"
    return json.loads(dataset_json_file.read_text()), dataset_json_file


def ensure_plans(env: dict, name: str, plans: str, configuration: str, num_processes: int, log_folder: Path,
                 verbose: bool = False, dry_run: bool = False, normalization=None):
    """Plans and preprocessed data for `plans`: planned with the command that writes them when missing
    (nnUNetPlansCIN: nnUNetv2_plan_and_preprocess_cin; nnUNetPlans: nnU-Net's own nnUNetv2_plan_and_preprocess, one
    z-score for every image; nnUNetPlansCIN with `normalization` ((modality, scheme), ...): ours with
    --modality_normalization under its own plans name); other plans must exist."""
    from nnunet_cin.experiments.compare.arms import plans_with_normalization
    target = plans_with_normalization(plans, normalization)
    plans_file = Path(env["nnUNet_preprocessed"]) / name / f"{target}.json"
    if plans_file.is_file():
        return
    commands = {CIN_PLANS: "nnUNetv2_plan_and_preprocess_cin", NNUNET_PLANS: "nnUNetv2_plan_and_preprocess"}
    if plans not in commands or (normalization and plans != CIN_PLANS):
        raise FileNotFoundError(f"{plans_file} does not exist: plan and preprocess the dataset for plans {target} "
                                f"first")
    dataset_id = name.split("_")[0][len("Dataset"):]
    command = [commands[plans], "-d", dataset_id, "-c", configuration, "-np", str(num_processes), "-npfp",
               str(num_processes)]
    if normalization:
        command += ["--modality_normalization", *(f"{m}={s}" for m, s in normalization),
                    "-overwrite_plans_name", target]
    plans = target
    log(f"planning and preprocessing: {' '.join(command)}")
    if not dry_run:
        plan_env = dict(env)
        if plan_env.get("nnUNet_n_proc_DA") == "0":
            plan_env["nnUNet_n_proc_DA"] = "1"  # nnU-Net's planner calls torch.set_num_threads(it), which rejects 0
        run_logged(command, plan_env, log_folder / f"plan_and_preprocess_{plans}.log", verbose)


@dataclass
class Split:
    file: Path
    written: bool  # by this comparison (else found there)
    validation: Dict[object, Dict[str, List[str]]]  # {fold: {modality: [case ids]}}


def ensure_split(env: Mapping[str, str], name: str, plans: str, configuration: str, folds: Sequence,
                 dataset_json: dict, dry_run: bool = False) -> Optional[Split]:
    """The one splits_final.json every arm trains with. nnU-Net's trainers read nnUNet_preprocessed/<dataset>/
    splits_final.json whatever their plans, and the first trainer that finds none writes its own: plain
    nnUNetTrainer a random 5-fold split, ours one stratified by modality. So that every arm gets the same folds
    whatever runs first (or at the same time, -j), the file is written before any training: nnunet-cin's stratified
    split (nnunet_cin.training.splits, the one nnUNetTrainerCIN makes). An existing file (e.g. the paper's splits
    from nnUNetv2_convert_mmwhs) is used as it is. Returns None in a dry run when the file does not exist yet."""
    from nnunet_cin.modalities import ModalityRules
    from nnunet_cin.training.splits import stratified_crossval_split

    preprocessed = Path(env["nnUNet_preprocessed"]) / name
    splits_file = preprocessed / SPLITS_FILE
    rules = ModalityRules.from_dataset_json(dataset_json)
    written = False
    if not splits_file.is_file():
        if dry_run:
            log(f"split: would write {splits_file} (5 folds, stratified by modality)")
            return None
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        data_identifier = PlansManager(str(preprocessed / f"{plans}.json")).get_configuration(
            configuration).data_identifier
        data_folder = str(preprocessed / data_identifier)
        identifiers = infer_dataset_class(data_folder).get_identifiers(data_folder)
        splits = stratified_crossval_split(identifiers, rules.resolve(identifiers))
        partial = splits_file.with_name(f"{SPLITS_FILE}.{os.getpid()}.partial")
        partial.write_text(json.dumps(splits, indent=1))
        os.replace(partial, splits_file)  # written aside and renamed: a reader never sees half a file
        written = True
        log(f"split: wrote {splits_file} (5 folds, stratified by modality), used by every arm")
    else:
        splits = json.loads(splits_file.read_text())
    validation = {}
    for fold in folds:
        if fold == "all":
            continue
        if not 0 <= int(fold) < len(splits):
            raise ValueError(f"fold {fold} is not in {splits_file} ({len(splits)} folds): nnU-Net would train it on a "
                             f"random 80:20 split of its own; choose folds 0-{len(splits) - 1}")
        validation[fold] = rules.cases_of(rules.resolve(splits[int(fold)]["val"]))
    return Split(splits_file, written, validation)


def check_trainers(names: Sequence[str], env: Mapping[str, str]):
    """Every trainer must be found by nnU-Net (before hours of training start). Looked up in a subprocess with the
    comparison's environment, exactly as nnUNetv2_train will."""
    code = ("import sys, io, contextlib\n"
            "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name\n"
            "bad = []\n"
            "for n in sys.argv[1:]:\n"
            "    try:\n"
            "        with contextlib.redirect_stdout(io.StringIO()): recursive_find_trainer_class_by_name(n)\n"
            "    except Exception as e: bad.append(n + ': ' + str(e).splitlines()[0][:300])\n"
            "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n")
    result = subprocess.run([sys.executable, "-c", code, *names], env=dict(env), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nnU-Net cannot use these trainers (nnUNet_extTrainer="
                           f"{env.get('nnUNet_extTrainer', '')}):\n{result.stdout.strip() or result.stderr[-2000:]}")
