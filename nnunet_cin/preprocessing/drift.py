"""Rule drift: preprocessed cases that the current dataset.json rules give another modality than the one they were
preprocessed (normalized) as. One check, `drifted_cases`, with one message per caller:

- planning (`check_preprocessed_data`): after the modality rules or "modality_normalization" change, planning alone
  (`--no_pp`) would write plans that describe data they did not make. nnU-Net's preprocessing replaces a
  configuration's whole folder, so only the folders this run does not preprocess again can disagree; they are found
  before anything is written, with what to re-run.
- training (`refuse_rule_drift`): a trainer would condition and sample a case as one modality that was normalized as
  another. Our trainers refuse to start instead, naming the cases; otherwise they take each case's modality from what
  preprocessing stored (and the rules for data of plain nnU-Net preprocessing, which stores none).

Each preprocessed case stores its modality and conditioning index (properties["modality"], ["modality_index"] in its
.pkl; nnunet_cin.preprocessing.preprocessor.stored_modalities); the plans record each modality's normalization scheme.
"""
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json

from nnunet_cin.modalities import ModalityError, ModalityRules
from nnunet_cin.plans import CINPlans
from nnunet_cin.preprocessing.preprocessor import stored_modalities

MAX_LISTED = 20  # cases listed in a message


class RuleDriftError(ModalityError):
    """Existing preprocessed data disagree with the current dataset.json; the message names the cases and the fix."""


def drifted_cases(stored: Mapping[str, Tuple], rules: ModalityRules,
                  case_modality: Mapping[str, str]) -> Dict[str, Tuple[Tuple, Tuple]]:
    """{case: ((modality, index) it was preprocessed as, (modality, index) the rules give now)} for the cases of
    `stored` ({case: (modality, index)}, as stored_modalities reads them) whose modality or conditioning index differs
    from the rules' (`case_modality`: the rules' {case: modality}). Cases preprocessed without a modality (plain
    nnU-Net) and cases that are no longer in the dataset are left out."""
    out = {}
    for case, was in stored.items():
        if was[0] is None or case not in case_modality:
            continue
        now = (case_modality[case], rules.index_of_name(case_modality[case]))
        if tuple(was) != now:
            out[case] = (tuple(was), now)
    return out


def scheme_disagreements(old_plans: dict, schemes: Mapping[str, str]) -> Dict[str, Tuple[str, str]]:
    """{modality: (scheme the plans normalized it with, scheme dataset.json asks for now)} where they differ."""
    old = CINPlans(old_plans).normalization_schemes or {}
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
        found = drifted_cases(stored_modalities(folder), rules, case_modality)
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


# ------------------------------------------------------------------------------------------------------- training
def preprocessed_folder(plans: dict, configuration: str) -> Optional[str]:
    """Where nnU-Net's trainer reads the configuration's preprocessed cases (None: not there, nothing to check)."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if not nnUNet_preprocessed.is_set():
        return None
    folder = join(nnUNet_preprocessed, plans["dataset_name"],
                  PlansManager(plans).get_configuration(configuration).data_identifier)
    return folder if os.path.isdir(folder) else None


def refuse_rule_drift(plans: dict, configuration: str, rules: ModalityRules) -> Dict[str, str]:
    """{case: modality} as preprocessing stored it for the cases of `configuration` (empty: plain nnU-Net
    preprocessing, or no data yet), after checking that the rules agree; raises ModalityError naming every case that
    `rules` now give another modality (or index) than the one it was preprocessed as."""
    from nnunetv2.paths import nnUNet_preprocessed

    folder = preprocessed_folder(plans, configuration)
    if folder is None:
        return {}
    stored = {case: was for case, was in stored_modalities(folder).items() if was[0] is not None}
    if not stored:
        return {}  # plain nnU-Net preprocessing: the rules are the only source
    drifted = drifted_cases(stored, rules, rules.resolve(stored))
    if not drifted:
        return {case: modality for case, (modality, _) in stored.items()}
    changed = [f"  {case}: preprocessed as {was[0]}, the rules now say {now[0]}"
               + (f" (index {was[1]} -> {now[1]})" if was[0] == now[0] else "")
               for case, (was, now) in drifted.items()]
    shown = changed[:MAX_LISTED] + ([f"  ... and {len(changed) - MAX_LISTED} more"] if len(changed) > MAX_LISTED else [])
    dataset = plans["dataset_name"]
    number = re.match(r"Dataset(\d+)_", dataset)
    raise RuleDriftError(
        f"{len(changed)} of the {len(stored)} preprocessed cases in {folder} are another modality by the rules of "
        f"{join(nnUNet_preprocessed, dataset, 'dataset.json')} (modality_patterns / case_modalities) than the one "
        f"they were preprocessed (and normalized) as:\n" + "\n".join(shown) + "\n"
        f"Nothing was trained. Preprocess again with the current rules: nnUNetv2_plan_and_preprocess_cin -d "
        f"{number.group(1) if number else dataset} -c {configuration} (or restore the rules the data was "
        f"preprocessed with).")
