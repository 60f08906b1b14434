"""`nnunet-cin compare`: the paper's comparison on any conditioned dataset, with nnU-Net's own commands.

For one dataset, configuration, schedule, set of folds and (optionally) seeds it trains (`nnUNetv2_train`, one
subprocess per model, seed and fold):

    single           nnUNetTrainerSingleModality_<M>, one model per modality M (its cases only)
    finetune         nnUNetTrainerSingleModality_<B> started from the single-modality model of another modality A
                     (`-pretrained_weights <A's fold_X/checkpoint_final.pth>`); under finetuned_from_<A>/
    nnunet           plain nnU-Net as its maintainers advise for mixed CT+MR: nnUNetTrainer on nnU-Net's own plans
                     (nnUNetPlans: nnUNetv2_plan_and_preprocess, one z-score for every image), all cases, no modality
    joint            nnUNetTrainerJoint: all modalities, mixed batches, no conditioning
    joint_alternate  nnUNetTrainerJointAlternate: all modalities, one modality per batch in turn, no conditioning
    joint_zscore     nnUNetTrainerJoint on nnUNetPlans (z-score for every image)
    cin              nnUNetTrainerCIN: all modalities, mixed batches, CIN in the encoder (the method)
    cin_zscore       nnUNetTrainerCIN on nnUNetPlans (z-score for every image)
    cin_alternate    nnUNetTrainerCINAlternate: conditional, one modality per batch in turn (opt-in)
    cin_all_norms    nnUNetTrainerCINAllNorms: CIN in every normalization, decoder too (opt-in)
    cin_adapters     nnUNetTrainerCINAdapters: CIN in every normalization and a residual 1x1 adapter of each
                     modality's own after it (opt-in)
    vit_joint, cvit  nnUNetTrainerViTJoint / nnUNetTrainerCViT (UNETR, LayerNorm vs CIN), opt-in
    swin_joint, cswin  nnUNetTrainerSwinUNETRJoint / nnUNetTrainerCSwinUNETR, opt-in
    NAME=TRAINER     (--arm) any other trainer that serves every modality

The dataset is planned both ways when missing (nnUNetv2_plan_and_preprocess_cin for -p nnUNetPlansCIN, nnU-Net's
nnUNetv2_plan_and_preprocess for the z-score arms), and every arm trains with ONE split file: splits_final.json,
written before any training (5 folds stratified by modality) unless the dataset already has one. joint, cin,
joint_zscore and cin_zscore form a 2x2 of the two levers, normalization x conditioning.

Then each run's validation cases are evaluated (nnU-Net's final-validation outputs `fold_X/validation/*`, each case
conditioned on its own modality; nnU-Net's metrics through nnunet_cin.evaluation.evaluate, grouped per modality by
the dataset's rules, plus "WH": the Dice of the union of all foreground labels). Statistics over validation cases
(the unit; with several seeds a case's values are averaged first): mean and 95% Student-t interval per method,
modality and structure; each method against the reference (--reference, default joint): mean per-case difference
with a 95% bootstrap interval, Wilcoxon signed-rank p and a verdict. Outputs in the output folder: comparison.md,
comparison.csv, cases.csv, comparison.png, comparison_paired.png, evaluations/<run>.json, logs/<run>.log.

Resumable: a run whose fold has checkpoint_final.pth and validation/summary.json is not trained again, an interrupted
one continues with `--c` from the last epoch reached (`--val` when only the final validation is missing), an
evaluation already on disk is reused. Run the same command again after an interruption.

Modules: arms (what to train), prepare (environment, dataset, plans, split, trainer check), running (training and
evaluation of each run), cases (the per-case values), reporting (statistics, tables, CSV, plots), cli (this command).
"""
from typing import Optional, Sequence

from nnunet_cin.experiments.compare import cli
from nnunet_cin.experiments.compare.cli import add_arguments, run  # noqa: F401  (`nnunet-cin compare` uses them)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m nnunet_cin.experiments.compare` / scripts/run_comparison.py: the command, this text as its help."""
    return cli.main(argv, description=__doc__)
