"""Rule drift: preprocessed data that no longer agree with the dataset.json about to be planned.

Each preprocessed case stores the modality it was normalized as and its conditioning index (properties["modality"],
properties["modality_index"] in its .pkl); the plans record each modality's normalization scheme. After the modality
rules or "modality_normalization" change in dataset.json, planning alone (`--no_pp`) would write plans that
describe data they did not make: cases normalized as one modality and conditioned as another. nnU-Net's
preprocessing replaces a configuration's whole folder, so only the folders this run does not preprocess again can
disagree; `check_preprocessed_data` finds them before anything is written and says what to re-run.
"""
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json

from nnunet_cin.modalities import ModalityError, ModalityRules
from nnunet_cin.preprocessing.preprocessor import stored_modalities

MAX_LISTED = 20


class RuleDriftError(ModalityError):
    """Existing preprocessed data disagree with the current dataset.json; the message names the cases and the fix."""


def case_disagreements(data_folder: str, rules: ModalityRules,
                       case_modality: Mapping[str, str]) -> Dict[str, Tuple[Tuple, Tuple]]:
    """{case: ((modality, index) it was preprocessed with, (modality, index) the rules give now)} for the cases of a
    preprocessed data folder whose stored modality or conditioning index differs from the rules'. Cases that are no
    longer in the dataset are left out."""
    out = {}
    for case, stored in stored_modalities(data_folder).items():
        if case not in case_modality:
            continue
        now = (case_modality[case], rules.index_of_name(case_modality[case]))
        if stored != now:
            out[case] = (stored, now)
    return out


def scheme_disagreements(old_plans: dict, schemes: Mapping[str, str]) -> Dict[str, Tuple[str, str]]:
    """{modality: (scheme the plans normalized it with, scheme dataset.json asks for now)} where they differ."""
    old = (old_plans.get("cin") or {}).get("normalization_schemes") or {}
    return {m: (old[m], s) for m, s in schemes.items() if m in old and old[m] != s}


def _describe(stored_or_now: Tuple) -> str:
    modality, index = stored_or_now
    return "no modality" if modality is None else f"{modality} (index {index})"


def check_preprocessed_data(preprocessed_dataset_folder: str, plans_name: str, rules: ModalityRules,
                            case_modality: Mapping[str, str], schemes: Mapping[str, str],
                            preprocessed_now: Sequence[str], dataset_json_file: Optional[str] = None) -> None:
    """Raise RuleDriftError when a data folder of the existing plans `plans_name`, of a configuration that this run
    does not preprocess again (`preprocessed_now`), holds cases preprocessed with another modality or index than the
    rules now give, or the plans normalized a modality with another scheme than dataset.json now asks for."""
    plans_file = join(preprocessed_dataset_folder, plans_name + ".json")
    if not isfile(plans_file):
        return
    old_plans = load_json(plans_file)
    folders: Dict[str, List[str]] = {}
    for configuration, c in old_plans.get("configurations", {}).items():
        if configuration in preprocessed_now or "data_identifier" not in c:
            continue  # preprocessed again (nnU-Net replaces the folder), or data inherited from another configuration
        folder = join(preprocessed_dataset_folder, c["data_identifier"])
        if isdir(folder) and any(n.endswith(".pkl") for n in os.listdir(folder)):
            folders.setdefault(folder, []).append(configuration)
    if not folders:
        return
    problems, stale_configurations = [], []
    cases = {}
    for folder, configurations in folders.items():
        found = case_disagreements(folder, rules, case_modality)
        if found:
            stale_configurations += configurations
            cases.update(found)
    for case, (stored, now) in sorted(cases.items())[:MAX_LISTED]:
        problems.append(f"- case {case}: preprocessed as {_describe(stored)}, the modality rules now say "
                        f"{_describe(now)}")
    if len(cases) > MAX_LISTED:
        problems.append(f"- ... and {len(cases) - MAX_LISTED} more case(s)")
    schemes_changed = scheme_disagreements(old_plans, schemes)
    for m, (old, new) in schemes_changed.items():
        problems.append(f"- modality {m}: preprocessed with {old}, dataset.json now asks for {new}")
    if schemes_changed:
        stale_configurations = [c for cs in folders.values() for c in cs]
    if not problems:
        return
    where = f" ({dataset_json_file})" if dataset_json_file else ""
    stale_configurations = sorted(set(stale_configurations))
    raise RuleDriftError(
        f"the preprocessed data of {plans_name} ({', '.join(stale_configurations)}) in {preprocessed_dataset_folder} "
        f"disagree with the current dataset.json{where}:\n" + "\n".join(problems) + "\n"
        f"Plans written now would not describe these data (cases normalized as one modality and conditioned as "
        f"another). Re-run preprocessing: nnUNetv2_plan_and_preprocess_cin without --no_pp, with "
        f"-c {' '.join(stale_configurations)} (or delete those data folders if you no longer need them).")
