"""The modality each case was preprocessed as, against the modality the dataset.json rules give it now.

nnUNetv2_plan_and_preprocess_cin normalizes each case with its modality's scheme and statistics and stores the
modality in the case's properties (CASE.pkl: "modality", "modality_index"). When the rules change afterwards (the
patterns or `case_modalities` edited in the preprocessed dataset.json, or in the raw one followed by
`nnUNetv2_plan_and_preprocess_cin --no_pp`), a trainer would condition and sample a case as one modality that was
normalized as another. Our trainers refuse to start instead, naming the cases: the normalization was chosen by the
old modality, so only preprocessing again makes the data agree with the rules. Plain nnU-Net preprocessing stores
no modality; then the rules are the only source and there is nothing to check.
"""
import os
import re
from typing import Dict, Optional

from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_cin.modalities import ModalityError, ModalityRules
from nnunet_cin.preprocessing.preprocessor import stored_modalities

SHOWN = 20  # cases listed in the message


def preprocessed_folder(plans: dict, configuration: str) -> Optional[str]:
    """Where nnU-Net's trainer reads the configuration's preprocessed cases (None: not there, nothing to check)."""
    if not nnUNet_preprocessed.is_set():
        return None
    folder = join(nnUNet_preprocessed, plans["dataset_name"],
                  PlansManager(plans).get_configuration(configuration).data_identifier)
    return folder if os.path.isdir(folder) else None


def preprocessed_modalities(folder: str) -> Dict[str, str]:
    """{case: modality} of the cases in `folder` whose properties record one."""
    return {case: modality for case, (modality, _) in stored_modalities(folder).items() if modality is not None}


def refuse_rule_drift(plans: dict, configuration: str, dataset_json: dict) -> None:
    """Raise ModalityError when a preprocessed case of `configuration` is another modality by the rules of
    `dataset_json` than the one it was preprocessed as."""
    folder = preprocessed_folder(plans, configuration)
    if folder is None:
        return
    stored = preprocessed_modalities(folder)
    if not stored:
        return  # plain nnU-Net preprocessing: the rules are the only source
    now = ModalityRules.from_dataset_json(dataset_json).resolve(stored)
    changed = [f"  {case}: preprocessed as {was}, the rules now say {now[case]}"
               for case, was in stored.items() if now[case] != was]
    if not changed:
        return
    shown = changed[:SHOWN] + ([f"  ... and {len(changed) - SHOWN} more"] if len(changed) > SHOWN else [])
    dataset = plans["dataset_name"]
    number = re.match(r"Dataset(\d+)_", dataset)
    raise ModalityError(
        f"{len(changed)} of the {len(stored)} preprocessed cases in {folder} are another modality by the rules of "
        f"{join(nnUNet_preprocessed, dataset, 'dataset.json')} (modality_patterns / case_modalities) than the one "
        f"they were preprocessed (and normalized) as:\n" + "\n".join(shown) + "\n"
        f"Nothing was trained. Preprocess again with the current rules: nnUNetv2_plan_and_preprocess_cin -d "
        f"{number.group(1) if number else dataset} -c {configuration} (or restore the rules the data was "
        f"preprocessed with).")
