"""Where nnunet-cin carries a copy of an nnU-Net function body (nnU-Net has no hook there), and what each original
looked like when it was copied: {"module:qualname" of the original: sha256 of its source (inspect.getsource), first
16 hex digits}.

tests/test_nnunet_copies.py fails when an installed original differs from the one recorded here. Then: read the new
original, carry its change into our copy (named in the comment above its entry), and record the new hash
(`python -m nnunet_cin.nnunet_copies` prints the current ones).
Adding a copy: mark it where it lives, in a comment or a docstring, naming the original by its qualified name
("nnU-Net 2.8.1's Class.method, copied: no hook for Y; the only change: Z") and add the original below.
"""
import hashlib
import importlib
import inspect
from typing import Dict

NNUNET_VERSION = "2.8.1"  # every copy below was made from this version (setup.py pins it)

COPIES: Dict[str, str] = {
    # nnunet_cin.training.cin_trainer.nnUNetTrainerCIN.get_dataloaders
    "nnunetv2.training.nnUNetTrainer.nnUNetTrainer:nnUNetTrainer.get_dataloaders": "5f59e2b907cfa2d1",
    # nnunet_cin.training.schedules.WarmupPolyLRScheduler.step
    "nnunetv2.training.lr_scheduler.polylr:PolyLRScheduler.step": "da0c9778871992e6",
    # nnunet_cin.planning.planners.CINPlannerMixin.static_estimate_VRAM_usage
    "nnunetv2.experiment_planning.experiment_planners.default_experiment_planner:"
    "ExperimentPlanner.static_estimate_VRAM_usage": "083aa779f7d1dee0",
    # nnunet_cin.planning.fingerprint.CINFingerprintExtractor._analyze_cases (the pool loop of run)
    "nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor:DatasetFingerprintExtractor.run": "02e10bff6e8d2e81",
    # nnunet_cin.preprocessing.preprocessor.CINPreprocessor.run_case
    "nnunetv2.preprocessing.preprocessors.default_preprocessor:DefaultPreprocessor.run_case": "90e13fc210745c34",
    # nnunet_cin.preprocessing.preprocessor.CINPreprocessor._normalize
    "nnunetv2.preprocessing.preprocessors.default_preprocessor:DefaultPreprocessor._normalize": "4b5d52ba18f072bc",
    # nnunet_cin.preprocessing.preprocessor.CINPreprocessor.run_case_save
    "nnunetv2.preprocessing.preprocessors.default_preprocessor:DefaultPreprocessor.run_case_save": "2021027938e7f10f",
    # nnunet_cin.evaluation.evaluate._nnunet_means (the means at its end)
    "nnunetv2.evaluation.evaluate_predictions:compute_metrics_on_folder": "98d5718a5cc4bc97",
    # nnunet_cin.planning.plan_and_preprocess.plan_and_preprocess (the configuration loop) and copy_gt_segmentations
    "nnunetv2.experiment_planning.plan_and_preprocess_api:preprocess_dataset": "2b070460812ad453",
}


def original(target: str):
    """The installed nnU-Net object named "module:qualname"."""
    module, qualname = target.split(":")
    obj = importlib.import_module(module)
    for name in qualname.split("."):
        obj = getattr(obj, name)
    return obj


def source_hash(target: str) -> str:
    return hashlib.sha256(inspect.getsource(original(target)).encode()).hexdigest()[:16]


def changed_originals() -> Dict[str, str]:
    """{target: current hash} of the originals whose installed source differs from the recorded one."""
    return {t: h for t, h in ((t, source_hash(t)) for t in COPIES) if h != COPIES[t]}


if __name__ == "__main__":
    for target in COPIES:
        print(f'"{target}": "{source_hash(target)}",')
