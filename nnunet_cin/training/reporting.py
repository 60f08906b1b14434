"""Per-modality reporting during training: pseudo-Dice per modality each epoch (log and progress_per_modality.png)
and the per-modality means of the final validation (summary.json and a table in the training log).

The per-case metrics are nnU-Net's own (compute_metrics_on_folder writes them to summary.json); the per-modality
summary is nnunet_cin.evaluation.evaluate's, the same as `nnUNetv2_evaluate_cin` prints.
"""
from typing import Dict, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # (its import selects matplotlib's 'agg' backend)

PER_MODALITY_KEY = "mean_fg_dice/{}"
PER_MODALITY_EMA_KEY = "ema_fg_dice/{}"
PER_MODALITY_PLOT = "progress_per_modality.png"
SUMMARY_KEY = "per_modality"
MEAN_KEY = "foreground_mean_per_modality"


def pseudo_dice_per_modality(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray,
                             modalities: Sequence[str]) -> Dict[str, float]:
    """tp/fp/fn: (M, C) counts summed over an epoch's validation batches. Mean foreground pseudo-Dice per modality
    (NaN for a modality that had no validation sample or no foreground at all, as nnU-Net does for a class)."""
    out = {}
    for m, name in enumerate(modalities):
        denominator = 2 * tp[m] + fp[m] + fn[m]
        with np.errstate(invalid="ignore", divide="ignore"):
            dice = np.where(denominator > 0, 2 * tp[m] / np.maximum(denominator, 1e-8), np.nan)
        out[name] = float(np.nanmean(dice)) if not np.all(np.isnan(dice)) else float("nan")
    return out


def merge_validation_outputs(parts: Sequence[tuple], num_modalities: int) -> dict:
    """One validation_step output from nnU-Net's outputs on the modality parts of a batch, parts = [(m, number of
    samples, output)]: the loss averaged over samples, tp/fp/fn summed as nnU-Net's, and kept per modality too
    ("tp_hard_per_modality" etc., (M, C), zero for modalities absent from the batch)."""
    total = sum(n for _, n, _ in parts)
    out = {'loss': np.sum([o['loss'] * n for _, n, o in parts], 0) / total}
    for k in ('tp_hard', 'fp_hard', 'fn_hard'):
        out[k] = np.sum([o[k] for _, _, o in parts], 0)
        per_modality = np.zeros((num_modalities, *out[k].shape), dtype=out[k].dtype)
        for m, _, o in parts:
            per_modality[m] = o[k]
        out[k + '_per_modality'] = per_modality
    return out


class ModalityLogger(LocalLogger):
    """nnU-Net's LocalLogger plus one pseudo-Dice curve (and its moving average) per modality, drawn in
    progress_per_modality.png next to nnU-Net's progress.png."""

    def __init__(self, modalities: Sequence[str], verbose: bool = False):
        super().__init__(verbose)
        self.modalities = list(modalities)
        for name in self.modalities:
            self.my_fantastic_logging[PER_MODALITY_KEY.format(name)] = []
            self.my_fantastic_logging[PER_MODALITY_EMA_KEY.format(name)] = []

    def log(self, key, value, epoch: int):
        super().log(key, value, epoch)
        if key.startswith("mean_fg_dice/"):
            ema_key = "ema_fg_dice/" + key.split("/", 1)[1]
            previous = self.my_fantastic_logging[ema_key][epoch - 1] if epoch > 0 and \
                len(self.my_fantastic_logging[ema_key]) >= epoch else None
            if previous is None or np.isnan(previous):
                ema = value
            elif np.isnan(value):
                ema = previous
            else:
                ema = 0.9 * previous + 0.1 * value
            super().log(ema_key, ema, epoch)

    def load_checkpoint(self, checkpoint: dict):
        super().load_checkpoint(checkpoint)
        epochs = len(self.my_fantastic_logging['mean_fg_dice'])
        for name in self.modalities:  # a checkpoint without per-modality curves (e.g. nnUNetTrainer's): NaN so far
            for key in (PER_MODALITY_KEY.format(name), PER_MODALITY_EMA_KEY.format(name)):
                values = self.my_fantastic_logging.setdefault(key, [])
                values.extend([float("nan")] * (epochs - len(values)))

    def plot_progress_png(self, output_folder):
        """nnU-Net's progress.png, as nnU-Net draws it, and progress_per_modality.png next to it: the pseudo-Dice
        per modality and its moving average."""
        super().plot_progress_png(output_folder)
        logging = self.my_fantastic_logging
        epoch = min([len(i) for i in logging.values()]) - 1  # as nnU-Net infers it (lists of epoch 0 have len 1)
        x_values = list(range(epoch + 1))
        sns.set(font_scale=2.5)
        fig, ax = plt.subplots(1, 1, figsize=(30, 18))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, name in enumerate(self.modalities):
            c = colors[i % len(colors)]
            ax.plot(x_values, logging[PER_MODALITY_KEY.format(name)][:epoch + 1], color=c, ls="dotted",
                    label=f"pseudo dice {name}", linewidth=3)
            ax.plot(x_values, logging[PER_MODALITY_EMA_KEY.format(name)][:epoch + 1], color=c, ls="-",
                    label=f"pseudo dice {name} (mov. avg.)", linewidth=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel("pseudo dice per modality")
        ax.legend(loc=(0, 1), ncol=max(1, len(self.modalities)))
        plt.tight_layout()
        fig.savefig(join(output_folder, PER_MODALITY_PLOT))
        plt.close(fig)


def add_per_modality_summary(summary_file: str, modality_of: Mapping[str, str], dataset_json: dict,
                             modalities: Sequence[str]) -> str:
    """Add per-modality means to nnU-Net's validation summary.json and return them as a table:
    "foreground_mean_per_modality": {modality: {"Dice": mean over its cases and foreground labels}} and
    "per_modality": nnunet_cin.evaluation.evaluate's full summary (per label, case lists, counts)."""
    from nnunet_cin.evaluation.evaluate import format_table, label_names_of, summarize_by_modality

    summary = load_json(summary_file)
    per_modality = summarize_by_modality(summary, modality_of, dataset_json["file_ending"],
                                         label_names=label_names_of(dataset_json),
                                         modalities=[m for m in modalities])
    summary[SUMMARY_KEY] = per_modality
    # the short form, named like nnU-Net's "foreground_mean": {modality: {"Dice": mean foreground Dice}}
    summary[MEAN_KEY] = {m: dict(per_modality["per_modality"][m]["mean"]) for m in per_modality["modalities"]}
    save_json(summary, summary_file, sort_keys=True)
    return format_table(per_modality)
