"""What `nnunet-cin add-modality` is asked to do, checked before anything is written.

The trained model: a model folder as nnUNetv2_predict_cin_from_modelfolder takes it (plans.json, dataset.json,
fold_X/checkpoint_final.pth), trained by nnUNetTrainerCIN or a subclass with a conditional network, on plans made by
nnUNetv2_plan_and_preprocess_cin (per-modality normalization). The new modality's cases: an nnU-Net raw dataset of
their own (imagesTr, and labelsTr unless --unlabeled); its dataset.json may name the modality ("modalities", with a
"modality_patterns" entry for it, "modality_normalization"), or be a plain nnU-Net dataset.json (then every case is the
new modality). Every problem is an AddModalityError that names the folder, file, case or key and says what to change.
"""
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import torch
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, subdirs

from nnunet_cin.modalities import ModalityError, ModalityRules
from nnunet_cin.planning.fingerprint import CINFingerprint
from nnunet_cin.plans import CINPlans, checkpoint_modalities

CLOSEST, MEAN = "closest", "mean"
CHECKPOINT = "checkpoint_final.pth"


class AddModalityError(ValueError):
    """A request add-modality cannot serve; the message says what to change. Nothing has been written."""


@dataclass
class Request:
    """A checked request. `cases`: {case id: {"images": [files], "label": file or None}} of the new modality."""
    model_folder: str
    dataset_folder: str
    dataset_json: dict
    new: str
    output: str
    folds: List[Union[int, str]]
    labelled: bool
    init: str  # CLOSEST, MEAN or one of the model's modalities
    cases: Dict[str, dict]
    pattern: Optional[str]  # the new modality's "modality_patterns" entry, carried into the extended model
    model_plans: dict
    model_dataset_json: dict
    configuration: str
    trainer_name: str
    trainer_class: type
    modalities: List[str]  # the model's, in conditioning order
    rules: dict  # the dataset.json modality keys of the extended model
    skipped: List[str] = field(default_factory=list)  # cases of the dataset that are another modality

    def checkpoint(self, fold) -> str:
        return join(self.model_folder, f"fold_{fold}", CHECKPOINT)


def _model_folds(model_folder: str, folds: Optional[Sequence[str]]) -> List[Union[int, str]]:
    if folds:
        out = [f if str(f) == "all" else int(f) for f in folds]
        missing = [f for f in out if not isfile(join(model_folder, f"fold_{f}", CHECKPOINT))]
        if missing:
            raise AddModalityError(f"{model_folder} has no {CHECKPOINT} for fold(s) {missing}; its folds: "
                                   f"{_model_folds(model_folder, None) or 'none'}")
        return out
    found = sorted(int(d[len("fold_"):]) for d in subdirs(model_folder, prefix="fold_", join=False)
                   if re.fullmatch(r"fold_\d+", d) and isfile(join(model_folder, d, CHECKPOINT)))
    if not found and isfile(join(model_folder, "fold_all", CHECKPOINT)):
        found = ["all"]
    return found


def _trainer(model_folder: str, folds) -> tuple:
    """(trainer name, trainer class, configuration, modalities) the checkpoints of `folds` record (all must agree)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN

    recorded = set()
    for f in folds:
        ckpt = torch.load(join(model_folder, f"fold_{f}", CHECKPOINT), map_location="cpu", weights_only=False,
                          mmap=True)
        recorded.add((ckpt.get("trainer_name"), (ckpt.get("init_args") or {}).get("configuration"),
                      tuple(checkpoint_modalities(ckpt) or ())))
    if len(recorded) > 1:
        raise AddModalityError(f"the folds {folds} of {model_folder} were trained differently (trainer, "
                               f"configuration, modalities): {sorted(recorded, key=str)}; pick folds of one model "
                               f"with -f")
    trainer_name, configuration, modalities = recorded.pop()
    if not trainer_name or configuration is None:
        raise AddModalityError(f"{join(model_folder, f'fold_{folds[0]}', CHECKPOINT)} is not an nnU-Net checkpoint "
                               f"(no trainer_name / init_args)")
    try:
        trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    except RuntimeError as e:
        raise AddModalityError(f"the model's trainer {trainer_name} was not found ({' '.join(str(e).split())}); "
                               f"nnunet-cin's trainers: run `eval \"$(nnunet-cin env)\"` to set nnUNet_extTrainer, "
                               f"and add the folder of your own trainer") from None
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, nnUNetTrainerCIN)
            and trainer_class.conditioned):
        raise AddModalityError(f"the model was trained by {trainer_name}, which has no CIN rows to add to: "
                               f"add-modality extends conditional models (nnUNetTrainerCIN and its conditional "
                               f"subclasses)")
    return trainer_name, trainer_class, configuration, list(modalities)


def _dataset_folder(dataset: str) -> str:
    if isdir(dataset):
        return os.path.abspath(dataset)
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        folder = join(nnUNet_raw.require(), maybe_convert_to_dataset_name(dataset))
    except (RuntimeError, ValueError) as e:
        raise AddModalityError(f"-d {dataset}: not a folder, and not a dataset of nnUNet_raw "
                               f"({' '.join(str(e).split())})") from None
    if not isdir(folder):
        raise AddModalityError(f"-d {dataset}: {folder} does not exist")
    return folder


def _new_cases(folder: str, dataset_json: dict, new: str, source: str) -> tuple:
    """({case: files} of the new modality, its pattern to carry over or None, [other cases])."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    if "file_ending" not in dataset_json:
        raise AddModalityError(f'{source} has no "file_ending" (e.g. ".nii.gz")')
    if "dataset" not in dataset_json and not isdir(join(folder, "imagesTr")):
        raise AddModalityError(f"{folder} has no imagesTr folder: put the new modality's images there "
                               f"(CASE_0000{dataset_json['file_ending']})")
    cases = {str(c): v for c, v in get_filenames_of_train_images_and_targets(folder, dict(dataset_json)).items()}
    if not cases:
        raise AddModalityError(f"{join(folder, 'imagesTr')} holds no case (no file ending in "
                               f"_0000{dataset_json['file_ending']}): the new modality needs at least one")
    if "modalities" not in dataset_json:
        return cases, None, []
    try:
        rules = ModalityRules.from_dataset_json(dataset_json, source)
        if new not in rules.modalities:
            raise AddModalityError(f'{source} lists "modalities" {rules.modalities}, not "{new}": add "{new}" there, '
                                   f'or pass the name it uses with -m')
        resolved = rules.resolve(cases)
    except ModalityError as e:
        raise AddModalityError(str(e)) from None
    mine = {c: v for c, v in cases.items() if resolved[c] == new}
    if not mine:
        raise AddModalityError(f'no case of {folder} is "{new}" by the rules of {source}: fix its '
                               f'"modality_patterns" / "case_modalities"')
    return mine, (dataset_json.get("modality_patterns") or {}).get(new), sorted(set(cases) - set(mine))


def _check_labels(model_dataset_json: dict, dataset_json: dict, source: str, labelled: bool) -> None:
    if "labels" not in dataset_json:
        if labelled:
            raise AddModalityError(f'{source} has no "labels": give the model\'s, '
                                   f'{model_dataset_json["labels"]}')
        return
    if dataset_json["labels"] != model_dataset_json["labels"]:
        raise AddModalityError(f'{source} has "labels" {dataset_json["labels"]}, the model '
                               f'{model_dataset_json["labels"]}: the new modality must be labelled with the model\'s '
                               f'labels (names and values); relabel the cases or fix dataset.json')


def _check_extended_rules(model_dataset_json: dict, model_folder: str, new: str, pattern: Optional[str],
                          new_cases: Sequence[str]) -> dict:
    """The modality keys of the extended model's dataset.json (the model's plus the new modality and its pattern),
    checked: the new cases resolve to `new`, the model's training cases (its dataset_fingerprint.json, when present)
    to what they were."""
    keys = {k: model_dataset_json[k] for k in ("modalities", "modality_patterns", "case_modalities")
            if k in model_dataset_json}
    keys["modalities"] = list(keys["modalities"]) + [new]
    if pattern is not None:
        keys["modality_patterns"] = dict(keys.get("modality_patterns") or {}, **{new: pattern})
    try:
        rules = ModalityRules.from_dataset_json(keys, join(model_folder, "dataset.json"))
    except ModalityError as e:
        raise AddModalityError(str(e)) from None
    expected = {c: new for c in new_cases} if pattern is not None else {}
    fingerprint = join(model_folder, "dataset_fingerprint.json")
    if isfile(fingerprint):
        expected.update(CINFingerprint(load_json(fingerprint)).case_modality)
    wrong = []
    for case, modality in expected.items():
        try:
            got = rules.modality_of(case)
        except ModalityError:
            got = "several patterns match, or none"
        if got != modality:
            wrong.append(f"  {case}: {modality}; by the extended rules: {got}")
    if wrong:
        raise AddModalityError(f'with "{new}": {pattern!r} added to the model\'s "modality_patterns", these cases '
                               f'change modality:\n' + "\n".join(wrong[:20]) + "\nMake the pattern exclusive, or "
                               f'remove it from the dataset\'s "modality_patterns" (then predict the new modality '
                               f'with --modality {new})')
    return rules.to_dict()


def check_request(model_folder: str, dataset: str, new: str, output: str, folds: Optional[Sequence[str]] = None,
                  unlabeled: bool = False, init: str = CLOSEST) -> Request:
    """Read and check everything add-modality needs; raises AddModalityError. Reads only."""
    model_folder = os.path.abspath(model_folder)
    for f in ("plans.json", "dataset.json"):
        if not isfile(join(model_folder, f)):
            raise AddModalityError(f"{model_folder} is not a model folder: it has no {f} (-i takes the folder that "
                                   f"holds plans.json, dataset.json and fold_X/{CHECKPOINT})")
    if os.path.exists(output):
        raise AddModalityError(f"the output folder {output} exists: add-modality writes a new model folder; give "
                               f"another -o, or remove it")
    inside = os.path.realpath(os.path.abspath(output))
    model = os.path.realpath(os.path.abspath(model_folder))
    if inside == model or inside.startswith(model.rstrip(os.sep) + os.sep):
        raise AddModalityError(f"-o {output} is inside the model folder {model_folder}, which add-modality only reads "
                               f"(nnU-Net would take a folder there for part of the model); give an -o outside it")
    use_folds = _model_folds(model_folder, folds)
    if not use_folds:
        raise AddModalityError(f"{model_folder} has no fold_X/{CHECKPOINT}: train the model first, or pass -f")
    model_plans = load_json(join(model_folder, "plans.json"))
    model_dataset_json = load_json(join(model_folder, "dataset.json"))
    trainer_name, trainer_class, configuration, recorded = _trainer(model_folder, use_folds)
    cin = CINPlans(model_plans)
    if not cin.per_modality_normalization:
        raise AddModalityError(f"{join(model_folder, 'plans.json')} has no per-modality normalization "
                               f"(plans['cin']): add-modality extends models planned by "
                               f"nnUNetv2_plan_and_preprocess_cin")
    modalities = cin.modalities
    if recorded and recorded != modalities:
        raise AddModalityError(f"the checkpoints record modalities {recorded}, plans.json {modalities}: the model "
                               f"folder is inconsistent")
    if not new or not new.strip():
        raise AddModalityError("-m: give the new modality a name, e.g. -m T2")
    if new in modalities:
        raise AddModalityError(f'the model already has modality "{new}" ({modalities}): predict it as it is, or '
                               f'name the new modality differently (-m)')
    if init not in (CLOSEST, MEAN) and init not in modalities:
        raise AddModalityError(f"--init {init}: use {CLOSEST}, {MEAN} or one of the model's modalities {modalities}")

    dataset_folder = _dataset_folder(dataset)
    source = join(dataset_folder, "dataset.json")
    if not isfile(source):
        raise AddModalityError(f"{dataset_folder} has no dataset.json")
    dataset_json = load_json(source)
    _check_labels(model_dataset_json, dataset_json, source, not unlabeled)
    cases, pattern, skipped = _new_cases(dataset_folder, dataset_json, new, source)
    channels = len(model_dataset_json.get("channel_names") or model_dataset_json.get("modality") or {})
    wrong_channels = [c for c, v in cases.items() if len(v["images"]) != channels]
    if wrong_channels:
        raise AddModalityError(f"case(s) {wrong_channels[:10]} of {dataset_folder} have another number of channel "
                               f"files than the model's {channels} (CASE_0000{dataset_json['file_ending']} ...)")
    if unlabeled:
        cases = {c: dict(v, label=None) for c, v in cases.items()}
    else:
        unlabelled = [c for c, v in cases.items() if not isfile(v["label"])]
        if unlabelled:
            raise AddModalityError(f"{len(unlabelled)} case(s) of {dataset_folder} have no label file: "
                                   f"{', '.join(unlabelled[:10])} (expected labelsTr/CASE{dataset_json['file_ending']})"
                                   f". Add the labels, or adapt from the images alone with --unlabeled")
    rules = _check_extended_rules(model_dataset_json, model_folder, new, pattern, list(cases))
    return Request(model_folder=model_folder, dataset_folder=dataset_folder, dataset_json=dataset_json, new=new,
                   output=os.path.abspath(output), folds=use_folds, labelled=not unlabeled, init=init, cases=cases,
                   pattern=pattern, model_plans=model_plans, model_dataset_json=model_dataset_json,
                   configuration=configuration, trainer_name=trainer_name, trainer_class=trainer_class,
                   modalities=modalities, rules=rules, skipped=skipped)
