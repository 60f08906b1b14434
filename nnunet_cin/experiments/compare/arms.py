"""What `nnunet-cin compare` trains: the methods (table rows), the models each needs (one trainer on one plans; one per
modality for the single-modality and fine-tuned rows), and the runs (model x seed x fold)."""
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

# Which plans a model trains on: the comparison's plans (-p, by default nnUNetPlansCIN from
# nnUNetv2_plan_and_preprocess_cin: per-modality normalization), or nnU-Net's plain plans (--plain-plans, by default
# nnUNetPlans from nnUNetv2_plan_and_preprocess: one z-score for every image).
COMPARISON_PLANS, PLAIN_PLANS = "comparison", "plain"


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    trainer: Optional[str] = None  # base trainer name (before schedule/template); None: per-modality models
    plans: str = COMPARISON_PLANS
    conditioning: Optional[str] = None  # None (no modality input), "encoder" (the paper), "all" (every norm)
    normalization: Optional[Tuple[Tuple[str, str], ...]] = None  # ((modality, scheme), ...) on top of the plans'


def normalization_tag(normalization) -> str:
    """A name part for a normalization choice: {"CT": "zscore"} -> "CT-zscore" (several joined by "_")."""
    return "_".join(f"{m}-{s}" for m, s in dict(normalization).items())


def plans_with_normalization(plans: str, normalization) -> str:
    """The plans name of the comparison's plans made with another normalization (nnUNetPlansCIN_CT-zscore)."""
    return f"{plans}_{normalization_tag(normalization)}" if normalization else plans


def parse_normalization_arm(spec: str) -> Tuple[Tuple[str, str], ...]:
    """--normalization CT=zscore[,MR=zscore] -> (("CT", "zscore"), ("MR", "zscore"))."""
    pairs = parse_pairs([p for p in spec.split(",") if p], f"--normalization {spec}")
    if not pairs or not all(re.fullmatch(r"[A-Za-z0-9_.]+", x) for kv in pairs.items() for x in kv):
        raise ValueError(f"--normalization {spec}: expected MODALITY=SCHEME[,MODALITY=SCHEME], e.g. CT=zscore or "
                         f"CT=CTClipZScore (letters, digits, _ and . only)")
    return tuple(pairs.items())


# Table rows, in table order. single/finetune have one model per modality (see plan_arms).
METHODS = {m.key: m for m in (
    Method("single", "single-modality"),
    Method("finetune", "fine-tuned from other modality"),
    Method("nnunet", "plain nnU-Net (z-score for all)", "nnUNetTrainer", PLAIN_PLANS),
    Method("joint", "joint (mixed batches)", "nnUNetTrainerJoint"),
    Method("joint_alternate", "joint (alternating batches)", "nnUNetTrainerJointAlternate"),
    Method("joint_zscore", "joint, z-score for all", "nnUNetTrainerJoint", PLAIN_PLANS),
    Method("cin", "conditional (CIN)", "nnUNetTrainerCIN", conditioning="encoder"),
    Method("cin_zscore", "conditional (CIN), z-score for all", "nnUNetTrainerCIN", PLAIN_PLANS, "encoder"),
    Method("cin_alternate", "conditional (CIN), alternating batches", "nnUNetTrainerCINAlternate",
           conditioning="encoder"),
    Method("cin_all_norms", "conditional (CIN in every norm)", "nnUNetTrainerCINAllNorms", conditioning="all"),
    Method("cin_adapters", "conditional (CIN + adapters per modality)", "nnUNetTrainerCINAdapters", conditioning="all"),
    Method("vit_joint", "ViT-UNETR (LayerNorm)", "nnUNetTrainerViTJoint"),
    Method("cvit", "C-ViT-UNETR (CIN)", "nnUNetTrainerCViT", conditioning="encoder"),
    Method("swin_joint", "Swin-UNETR (LayerNorm)", "nnUNetTrainerSwinUNETRJoint"),
    Method("cswin", "C-Swin-UNETR (CIN)", "nnUNetTrainerCSwinUNETR", conditioning="encoder"),
)}
DEFAULT_ARMS = ("single", "finetune", "nnunet", "joint", "joint_alternate", "joint_zscore", "cin", "cin_zscore")
# The two levers of the 2x2 table: normalization (plans) x conditioning, with everything else equal (same trainer
# code, same sampler): {(plans, conditioned): method key}
LEVERS = {(COMPARISON_PLANS, False): "joint", (COMPARISON_PLANS, True): "cin",
          (PLAIN_PLANS, False): "joint_zscore", (PLAIN_PLANS, True): "cin_zscore"}


@dataclass
class Arm:
    """One model (one trainer on one plans, one results folder), trained once per seed and fold."""
    name: str
    trainer: str
    modalities: List[str]  # the modalities whose validation cases fill the table from this model
    plans: str = COMPARISON_PLANS
    pretrained_from: Optional[str] = None  # name of the arm whose checkpoint_final.pth starts this one
    normalization: Optional[Tuple[Tuple[str, str], ...]] = None  # the comparison's plans, planned with this instead
    results_subfolder: Optional[str] = None  # below the results root (fine-tuned models), else the root itself


class Row(NamedTuple):
    key: str  # method key (or a custom arm's name)
    label: str
    cells: Dict[str, str]  # {modality: arm name}


@dataclass
class ComparisonPlan:
    arms: Dict[str, Arm]  # in training order (sources before the arms fine-tuned from them)
    rows: List[Row]
    modalities: List[str]
    methods: Dict[str, Method]  # of every row


@dataclass(frozen=True)
class Run:
    """One training: a model, a seed (None: unseeded, nnU-Net's behaviour) and a fold."""
    arm: Arm
    seed: Optional[int]
    fold: object  # int, or "all"

    @property
    def name(self) -> str:
        """Used for log and evaluation file names: <arm>[__seed_<s>]__fold_<f>."""
        return self.arm.name + ("" if self.seed is None else f"__seed_{self.seed}") + f"__fold_{self.fold}"

    def __str__(self):
        return f"{self.arm.name}" + ("" if self.seed is None else f" seed {self.seed}") + f" fold {self.fold}"


def trainer_name(base: str, schedule: Optional[str] = None, template: Optional[str] = None) -> str:
    """The trainer to run for a base name: `template.format(trainer=base)` (e.g. "{trainer}_5epochs",
    "{trainer}Tiny") or base + schedule (e.g. "_5epochs")."""
    if template is not None:
        if "{trainer}" not in template:
            raise ValueError(f"trainer template {template!r} must contain {{trainer}} (the arm's trainer name, e.g. "
                             f"nnUNetTrainerCIN), e.g. '{{trainer}}_5epochs'")
        return template.format(trainer=base)
    return base + (schedule or "")


def parse_pairs(items: Optional[Sequence[str]], what: str) -> Dict[str, str]:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def check_methods(methods: Sequence[str]):
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; valid: {list(METHODS)} (or --arm NAME=TRAINER)")


def plan_arms(modalities: Sequence[str], methods: Sequence[str] = DEFAULT_ARMS, schedule: Optional[str] = None,
              template: Optional[str] = None, finetune_from: Optional[Mapping[str, str]] = None,
              custom: Optional[Mapping[str, str]] = None,
              normalizations: Sequence[Tuple[Tuple[str, str], ...]] = ()) -> ComparisonPlan:
    """The models to train and which model fills which table cell.

    methods: keys of METHODS, in any order (the table keeps METHODS' order, custom arms last).
    finetune_from: {target modality: source modality}; default for each target: the first other modality of the
        dataset (with two modalities: the other one).
    custom: {row name: full trainer name} for trainers serving every modality, on the comparison's plans
        (schedule/template not applied).
    normalizations: one row each, "cin_<tag>": nnUNetTrainerCIN on the comparison's plans made with that
        normalization (plans_with_normalization), so that normalization options are compared with everything else equal.
    """
    modalities = list(modalities)
    check_methods(methods)
    finetune_from = dict(finetune_from or {})
    for target, source in finetune_from.items():
        for name in (target, source):
            if name not in modalities:
                raise ValueError(f"--finetune-from {target}={source}: {name!r} is not a modality of the dataset "
                                 f"{modalities}")
        if target == source:
            raise ValueError(f"--finetune-from {target}={source}: source and target must differ")
    if "finetune" in methods and len(modalities) < 2:
        raise ValueError(f"fine-tuning from another modality needs two modalities; the dataset has {modalities}")
    name = lambda base: trainer_name(base, schedule, template)
    arms: Dict[str, Arm] = {}
    rows: List[Row] = []
    row_methods: Dict[str, Method] = {}

    def single(m):
        key = f"single_{m}"
        if key not in arms:
            arms[key] = Arm(key, name(f"nnUNetTrainerSingleModality_{m}"), [m])
        return key

    for key, method in METHODS.items():
        if key not in methods:
            continue
        row_methods[key] = method
        if key == "single":
            rows.append(Row(key, method.label, {m: single(m) for m in modalities}))
        elif key == "finetune":
            cells = {}
            for target in modalities:
                source = finetune_from.get(target) or next(m for m in modalities if m != target)
                src = single(source)
                arm = f"finetune_{target}_from_{source}"
                arms[arm] = Arm(arm, name(f"nnUNetTrainerSingleModality_{target}"), [target], pretrained_from=src,
                                results_subfolder=f"finetuned_from_{source}")
                cells[target] = arm
            rows.append(Row(key, method.label, cells))
        else:
            arms[key] = Arm(key, name(method.trainer), modalities, method.plans)
            rows.append(Row(key, method.label, {m: key for m in modalities}))
    for normalization in normalizations:
        key = f"cin_{normalization_tag(normalization)}"
        if key not in arms:
            method = Method(key, "conditional (CIN), " + ", ".join(f"{m} {x}" for m, x in normalization),
                            "nnUNetTrainerCIN", conditioning="encoder", normalization=tuple(normalization))
            arms[key] = Arm(key, name(method.trainer), modalities, normalization=method.normalization)
            rows.append(Row(key, method.label, {m: key for m in modalities}))
            row_methods[key] = method
    for label, trainer in (custom or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", label) or label in arms or label in METHODS:
            raise ValueError(f"--arm {label}={trainer}: the name must be unique (not an arm's name) and use letters, "
                             f"digits, _ . - only")
        arms[label] = Arm(label, trainer, modalities)
        rows.append(Row(label, label, {m: label for m in modalities}))
        row_methods[label] = Method(label, label, trainer)
    if not rows:
        raise ValueError("nothing to compare: give --arms and/or --arm NAME=TRAINER")
    # sources first: single-modality models, then everything else in table order
    order = [a for a in arms if arms[a].pretrained_from is None] + [a for a in arms if arms[a].pretrained_from]
    return ComparisonPlan({a: arms[a] for a in order}, rows, modalities, row_methods)


def plan_runs(plan: ComparisonPlan, folds: Sequence, seeds: Sequence[Optional[int]]) -> List[Run]:
    """Every training, seed by seed and fold by fold, each fold's sources before the models fine-tuned from them."""
    return [Run(arm, seed, fold) for seed in seeds for fold in folds for arm in plan.arms.values()]


def reference_row(plan: ComparisonPlan, reference: Optional[str]) -> Optional[str]:
    """The row the paired table compares every other row with: `reference` (must be a row), by default "joint" (the
    conditional model's unconditioned twin) when compared, else the first row; None with a single row."""
    keys = [r.key for r in plan.rows]
    if reference is not None:
        if reference not in keys:
            raise ValueError(f"--reference {reference}: not an arm of this comparison; choose one of {keys}")
        return reference
    if len(keys) < 2:
        return None
    return "joint" if "joint" in keys else keys[0]
