"""Training the new modality's CIN rows with the model's own trainer.

`adaptation_trainer(model trainer class, Adaptation)` is a subclass of the trainer the model was trained with
(nnUNetTrainerCIN or one of its conditional subclasses: the same network, built the same way), plus:
- the network starts from the model fold's weights, each CIN tensor extended by one row (a copy of the closest
  modality's row, or the mean row: nnunet_cin.add_modality.rows.extended_state_dict);
- only the new rows (and what --adapt adds for the new modality: its rows in the decoder's norms, its residual
  adapters) are parameters that train (rows.attach_new_rows), and the optimizer is the model trainer's own
  (nnU-Net's SGD with momentum, Nesterov and weight decay; the transformer trainers' AdamW), built over the network
  after freezing: parameters without a gradient are skipped by torch's optimizers, weight decay included;
- nnU-Net's loss, augmentation, data loading and sliding-window validation as they are (labelled cases), on the new
  cases only (nnU-Net's fold "all": the few cases are the training and the validation cases);
- unlabelled cases (`UnlabeledAdaptation`): a test-time-adaptation objective instead of nnU-Net's loss (the mean
  voxel entropy of the prediction plus the disagreement between the prediction of an image and the mirrored-back
  prediction of its mirror image), no Dice (there are no labels), no final validation;
- no checkpoints of its own (nnunet-cin add-modality writes the extended model's checkpoint_final.pth itself, from
  `exported_weights`), no torch.compile (a few thousand parameters for a short run; the parametrized rows stay plain
  modules), no DDP.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn

from nnunet_cin.add_modality.rows import (attach_new_rows, cin_tensor_names, detach_new_rows, extended_state_dict,
                                          unchanged_except_new_rows)
from nnunet_cin.training.convert_pretrained import unwrap
from nnunet_cin.training.reporting import merge_validation_outputs


# The new rows' initial learning rate against the model trainer's (nnU-Net's SGD: 1e-2 -> 0.1): a few hundred to a
# few thousand parameters, a run of a few hundred iterations. On the benchmark's T2 (README, "Adding a modality to a
# trained model") 10x beat 1x clearly and 30x / 100x did not help.
NEW_ROWS_LR_FACTOR = 10.0


@dataclass
class Adaptation:
    """What one adaptation run does (a class attribute of the trainer `adaptation_trainer` makes)."""
    checkpoint: str  # the model fold's checkpoint_final.pth
    num_old: int  # the model's modalities (CIN rows)
    init: Union[int, str]  # the row the new rows start from: an index, or "mean"
    labelled: bool
    epochs: int
    iterations_per_epoch: int
    val_iterations_per_epoch: int
    initial_lr: Optional[float] = None  # None: NEW_ROWS_LR_FACTOR x the model trainer's
    consistency_weight: float = 1.0  # unlabelled objective: weight of the mirror consistency


class NewRowsAdaptation:
    """Mixin in front of the model's trainer class (see the module docstring)."""
    adaptation: Adaptation = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            raise RuntimeError("nnunet-cin add-modality trains on one device (no DDP)")
        a = self.adaptation
        self.num_epochs = a.epochs
        self.num_iterations_per_epoch = a.iterations_per_epoch
        self.num_val_iterations_per_epoch = a.val_iterations_per_epoch
        self.initial_lr = a.initial_lr if a.initial_lr is not None else NEW_ROWS_LR_FACTOR * self.initial_lr
        self.disable_checkpointing = True
        self.trainable: List[nn.Parameter] = []
        self.trained_parameters = 0

    def _do_i_compile(self):
        return False

    def initialize(self):
        super().initialize()
        total = sum(p.numel() for p in self.network.parameters())
        self.trainable = self.prepare_network(unwrap(self.network))
        self.optimizer, self.lr_scheduler = self.configure_optimizers()  # the model trainer's, over what trains
        self.trained_parameters = sum(p.numel() for p in self.trainable)
        init = self.adaptation.init
        start = "the mean row" if init == "mean" else f"the rows of {self.modalities[int(init)]}"
        self.print_to_log_file(f"Adding modality {self.modalities[-1]}: training {self.trained_parameters} of "
                               f"{total} parameters, starting from {start}", also_print_to_console=True)

    def prepare_network(self, network: nn.Module) -> List[nn.Parameter]:
        """Load the model's weights with one more CIN row each, and make the new rows the only trainable parameters
        (returned)."""
        weights = torch.load(self.adaptation.checkpoint, map_location="cpu", weights_only=False)["network_weights"]
        network.load_state_dict(extended_state_dict(weights, network, self.adaptation.init))
        return attach_new_rows(network, weights)

    def changed_outside_new_rows(self, original: Dict[str, torch.Tensor],
                                 weights: Dict[str, torch.Tensor]) -> List[str]:
        """The tensors of `weights` (exported_weights) that are not the model's `original` plus one CIN row: none, or
        add-modality has a bug (nothing is exported then)."""
        return unchanged_except_new_rows(original, weights, cin_tensor_names(unwrap(self.network)))

    def exported_weights(self) -> Dict[str, torch.Tensor]:
        """The trained network's state dict in the model's layout (M + 1 rows per CIN tensor), on the CPU."""
        network = unwrap(self.network)
        detach_new_rows(network)
        return {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}


class MirrorEntropyObjective(nn.Module):
    """The unlabelled objective: mean voxel entropy of the softmax prediction, plus `consistency_weight` x the mean
    squared difference (summed over classes) between the prediction of the first half of the batch and the
    mirrored-back prediction of the second half, which holds the same images mirrored along `mirror_dims` (None: no
    mirrored half, entropy only). With deep supervision only the full-resolution output counts."""

    def __init__(self, consistency_weight: float = 1.0):
        super().__init__()
        self.consistency_weight = consistency_weight
        self.mirror_dims = None

    def forward(self, output, target=None):
        logits = output[0] if isinstance(output, (list, tuple)) else output
        log_p = F.log_softmax(logits.float(), 1)
        p = log_p.exp()
        loss = -(p * log_p).sum(1).mean()
        if self.mirror_dims:
            a, b = p.chunk(2)
            loss = loss + self.consistency_weight * (a - torch.flip(b, self.mirror_dims)).square().sum(1).mean()
        return loss


class UnlabeledAdaptation(NewRowsAdaptation):
    """The new rows from images alone (see the module docstring)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions:
            raise NotImplementedError("--unlabeled adaptation of region-based models (sigmoid outputs) is not "
                                      "implemented")
        self.oversample_foreground_percent = 0.0  # no labels, no foreground to oversample

    def _build_loss(self):
        return MirrorEntropyObjective(self.adaptation.consistency_weight)

    def _mirror_dims(self, all_axes: bool = False) -> tuple:
        axes = tuple(self.inference_allowed_mirroring_axes or ())
        if not all_axes and axes:
            chosen = [a for a in axes if np.random.uniform() < 0.5]
            axes = tuple(chosen) if chosen else (axes[int(np.random.randint(len(axes)))],)
        return tuple(a + 2 for a in axes)

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's step on the batch followed by the same images mirrored (the objective compares the halves)."""
        dims = self._mirror_dims()
        self.loss.mirror_dims = dims or None
        data = batch['data']
        paired = dict(batch, data=torch.cat([data, torch.flip(data, dims)]) if dims else data,
                      keys=list(batch['keys']) * (2 if dims else 1))
        return super().train_step(paired)

    def validation_step(self, batch: dict) -> dict:
        """The objective on the validation batch (mirrored along every allowed axis); no Dice: there are no labels."""
        dims = self._mirror_dims(all_axes=True)
        self.loss.mirror_dims = dims or None
        data = batch['data'].to(self.device, non_blocking=True)
        keys = list(batch['keys'])
        if dims:
            data = torch.cat([data, torch.flip(data, dims)])
        with autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context():
            with self.conditioned_on(keys * (2 if dims else 1)):
                loss = self.loss(self.network(data))
        nothing = np.zeros(self.label_manager.num_segmentation_heads - 1)  # foreground classes: no counts
        out = {'loss': loss.detach().cpu().numpy(), 'tp_hard': nothing, 'fp_hard': nothing, 'fn_hard': nothing}
        return merge_validation_outputs([(int(self.lookup.model_index_of(keys[0])), len(keys), out)],
                                        len(self.lookup.modalities))

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("No final validation: the cases have no labels.", also_print_to_console=True)


def adaptation_trainer(model_trainer: type, adaptation: Adaptation, base: type = None) -> type:
    """A trainer class: `base` (NewRowsAdaptation, UnlabeledAdaptation for unlabelled cases, or a subclass) in front
    of the model's trainer class, with `adaptation` as its class attribute."""
    base = base or (NewRowsAdaptation if adaptation.labelled else UnlabeledAdaptation)
    name = f"{model_trainer.__name__}__add_modality"
    return type(name, (base, model_trainer), {"adaptation": adaptation, "__module__": __name__})
