"""Per-modality reporting during training: pseudo-Dice per modality each epoch (log and progress.png) and the
per-modality means of the final validation (summary.json and a table in the training log).

The per-case metrics are nnU-Net's own (compute_metrics_on_folder writes them to summary.json); the per-modality
summary is nnunet_cin.evaluate's, the same as `nnUNetv2_evaluate_cin` prints.
"""
from contextlib import contextmanager
from typing import Dict, Mapping, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
from nnunetv2.training.logging import nnunet_logger
from nnunetv2.training.logging.nnunet_logger import LocalLogger

PER_MODALITY_KEY = "mean_fg_dice/{}"
PER_MODALITY_EMA_KEY = "ema_fg_dice/{}"
SUMMARY_KEY = "per_modality"


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


class ModalityLogger(LocalLogger):
    """nnU-Net's LocalLogger plus one pseudo-Dice curve (and its moving average) per modality. progress.png gets a
    fourth panel with them; the three panels above are nnU-Net's, drawn by nnU-Net's own code."""

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
        for name in self.modalities:  # a checkpoint without per-modality curves: start them empty
            for key in (PER_MODALITY_KEY.format(name), PER_MODALITY_EMA_KEY.format(name)):
                self.my_fantastic_logging.setdefault(key, [])

    def plot_progress_png(self, output_folder):
        with self._extra_panel():
            super().plot_progress_png(output_folder)

    @contextmanager
    def _extra_panel(self):
        plt = nnunet_logger.plt
        subplots = plt.subplots
        logging = self.my_fantastic_logging
        epoch = min(len(v) for v in logging.values()) - 1

        def subplots_with_modality_panel(nrows, ncols, figsize, **kwargs):
            fig, axes = subplots(nrows + 1, ncols, figsize=(figsize[0], figsize[1] * (nrows + 1) / nrows), **kwargs)
            ax = axes[-1]
            x = list(range(epoch + 1))
            colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
            for i, name in enumerate(self.modalities):
                c = colors[i % len(colors)]
                ax.plot(x, logging[PER_MODALITY_KEY.format(name)][:epoch + 1], color=c, ls="dotted",
                        label=f"pseudo dice {name}", linewidth=3)
                ax.plot(x, logging[PER_MODALITY_EMA_KEY.format(name)][:epoch + 1], color=c, ls="-",
                        label=f"pseudo dice {name} (mov. avg.)", linewidth=4)
            ax.set_xlabel("epoch")
            ax.set_ylabel("pseudo dice per modality")
            ax.legend(loc=(0, 1), ncol=max(1, len(self.modalities)))
            return fig, axes[:-1]

        plt.subplots = subplots_with_modality_panel
        try:
            yield
        finally:
            plt.subplots = subplots


def add_per_modality_summary(summary_file: str, modality_of: Mapping[str, str], dataset_json: dict,
                             modalities: Sequence[str]) -> str:
    """Add per-modality means to nnU-Net's validation summary.json (key "per_modality": nnunet_cin.evaluate's
    summary, whose per_modality[m]["mean"]["Dice"] is modality m's mean foreground Dice) and return the table."""
    from nnunet_cin.evaluate import format_table, label_names_of, summarize_by_modality

    summary = load_json(summary_file)
    per_modality = summarize_by_modality(summary, modality_of, dataset_json["file_ending"],
                                         label_names=label_names_of(dataset_json),
                                         modalities=[m for m in modalities])
    summary[SUMMARY_KEY] = per_modality
    save_json(summary, summary_file, sort_keys=True)
    return format_table(per_modality)
