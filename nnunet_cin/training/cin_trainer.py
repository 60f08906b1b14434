"""nnUNetTrainerCIN: nnU-Net's trainer, plus modality.

One conditional network for all modalities of a dataset. What changes against nnUNetTrainer:
- the network: the plans' U-Net with CIN in its encoder (plain nnU-Net plans are converted; nnunet_cin.training.conditioning)
- every forward pass (training, validation, final validation) runs inside `nnunet_cin.condition(network, m)`, m the
  modality of each sample, looked up from the batch's case keys
- batches: nnunet_cin.training.sampling.ModalityDataLoader (mixed modalities, configurable shares, or alternating)
- folds: stratified by modality when nnU-Net creates splits_final.json (nnunet_cin.training.splits)
- reporting: pseudo-Dice per modality each epoch and per-modality means in validation/summary.json
  (nnunet_cin.training.reporting)
- checkpoints: nnU-Net's, plus checkpoint["modalities"] (the conditioning order) and checkpoint["cin"] (options);
  `--c` refuses a checkpoint made for other modalities
- -pretrained_weights: nnU-Net's own loader; other layouts are converted first (nnunet_cin.training.checkpoints)
Where nnU-Net 2.8.1 has no hook (get_dataloaders, save_checkpoint) its method body is copied and marked as such.

Options: class attributes of a subclass, or set in its __init__ after super().__init__ (like nnU-Net's
hyperparameters); they take effect when the data loaders are built (on_train_start):
    modality_sampling = "mixed" | "alternate"
    modality_shares = "equal" | "proportional" | {"CT": 2, "MR": 1}

NOTE: nnU-Net imports the files of this folder as top-level modules; shared code is imported absolutely
(`from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN`), never relatively.
"""
import os
from contextlib import ExitStack, contextmanager, nullcontext
from typing import List, Optional

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import isfile, join, save_json
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from torch import distributed as dist

from nnunet_cin.training.checkpoints import unwrap
from nnunet_cin.cin import condition
from nnunet_cin.training.conditioning import ModalityLookup, plans_for_trainer, split_by_modality, training_modalities
from nnunet_cin.training.reporting import (PER_MODALITY_KEY, ModalityLogger, add_per_modality_summary,
                                           merge_validation_outputs, pseudo_dice_per_modality)
from nnunet_cin.training.sampling import ModalityDataLoader
from nnunet_cin.training.schedules import add_schedules
from nnunet_cin.training.splits import stratified_crossval_split

class nnUNetTrainerCIN(nnUNetTrainer):
    conditioned = True  # False: plain network, same data pipeline (baselines)
    single_modality: Optional[str] = None  # train (and validate) on this modality only
    schedule_epochs: Optional[int] = None  # set by the _Xepochs variants
    modality_sampling = "mixed"
    modality_shares = "equal"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        all_modalities = training_modalities(plans, dataset_json)
        plans = plans_for_trainer(plans, configuration, all_modalities, self.conditioned, type(self).__name__)
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.schedule_epochs is not None:
            self.num_epochs = self.schedule_epochs
        self.lookup = ModalityLookup(dataset_json, all_modalities)
        if self.single_modality is not None:
            self.lookup.rules.index_of_name(self.single_modality)  # raises, naming the dataset's modalities
        # the modalities this model serves; for conditioned models also the CIN row order
        self.modalities: List[str] = [self.single_modality] if self.single_modality else all_modalities
        self.logger.local_logger = ModalityLogger(self.modalities)

    # ---------------------------------------------------------------------------------------------------- modality
    def conditioned_on(self, keys):
        """Context in which the network sees the modality of each case in `keys` (a no-op for plain networks)."""
        if not self.conditioned:
            return nullcontext()
        return condition(self.network, self.lookup.tensor(keys, self.device))

    def train_step(self, batch: dict) -> dict:
        with self.conditioned_on(batch['keys']):
            return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's validation step once per modality present in the batch (same samples, same network), so the
        pseudo-Dice counts can be kept per modality."""
        parts = []
        for m, part in split_by_modality(batch, self.lookup.indices(batch['keys'])):
            with self.conditioned_on(part['keys']):
                parts.append((m, len(part['keys']), super().validation_step(part)))
        return merge_validation_outputs(parts, len(self.lookup.modalities))

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        super().on_validation_epoch_end(val_outputs)
        counts = [np.sum([o[k + '_per_modality'] for o in val_outputs], 0) for k in ('tp_hard', 'fp_hard', 'fn_hard')]
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, counts)
            counts = [np.sum([g[i] for g in gathered], 0) for i in range(3)]
        dice = pseudo_dice_per_modality(*counts, self.lookup.modalities)
        for name in self.modalities:
            self.logger.log(PER_MODALITY_KEY.format(name), dice[name], self.current_epoch)

    def on_epoch_end(self):
        self.print_to_log_file('Pseudo dice per modality', {
            m: round(float(self.logger.get_value(PER_MODALITY_KEY.format(m), step=-1)), 4) for m in self.modalities})
        super().on_epoch_end()

    # -------------------------------------------------------------------------------------------------------- data
    def modality_data_loader(self, dataset, patch_size, final_patch_size, transforms, training: bool):
        """nnU-Net's nnUNetDataLoader, told each case's modality (nnunet_cin.training.sampling). Validation batches are always
        mixed with equal shares, so that every modality gets its pseudo-Dice."""
        return ModalityDataLoader(
            dataset, self.batch_size, patch_size, final_patch_size, self.label_manager,
            oversample_foreground_percent=self.oversample_foreground_percent, pad_sides=None, transforms=transforms,
            probabilistic_oversampling=self.probabilistic_oversampling,
            case_modality={k: self.lookup.index_of(k) for k in dataset.identifiers}, modalities=self.lookup.modalities,
            shares=self.modality_shares if training else "equal",
            mode=self.modality_sampling if training else "mixed",
            # alternate: continue the modality cycle where an interrupted run stopped (--c)
            first_batch=self.current_epoch * self.num_iterations_per_epoch if training else 0,
            num_workers=max(1, get_allowed_n_proc_DA()))

    def get_dataloaders(self):
        # nnUNetTrainer.get_dataloaders of nnU-Net 2.8.1, copied (it builds nnUNetDataLoader inline, there is no hook
        # for the loader class); the only change: self.modality_data_loader instead of nnUNetDataLoader.
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        deep_supervision_scales = self._get_deep_supervision_scales()
        (rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, mirror_axes) = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        tr_transforms = self.get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            is_cascaded=self.is_cascaded, foreground_labels=self.label_manager.foreground_labels,
            regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
            ignore_label=self.label_manager.ignore_label)
        val_transforms = self.get_validation_transforms(
            deep_supervision_scales, is_cascaded=self.is_cascaded,
            foreground_labels=self.label_manager.foreground_labels,
            regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
            ignore_label=self.label_manager.ignore_label)

        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        dl_tr = self.modality_data_loader(dataset_tr, initial_patch_size, self.configuration_manager.patch_size,
                                          tr_transforms, training=True)
        dl_val = self.modality_data_loader(dataset_val, self.configuration_manager.patch_size,
                                           self.configuration_manager.patch_size, val_transforms, training=False)

        allowed_num_processes = get_allowed_n_proc_DA()
        if allowed_num_processes == 0:
            mt_gen_train = SingleThreadedAugmenter(dl_tr, None)
            mt_gen_val = SingleThreadedAugmenter(dl_val, None)
        else:
            mt_gen_train = NonDetMultiThreadedAugmenter(data_loader=dl_tr, transform=None,
                                                        num_processes=allowed_num_processes,
                                                        num_cached=max(6, allowed_num_processes // 2), seeds=None,
                                                        pin_memory=self.device.type == 'cuda', wait_time=0.002)
            mt_gen_val = NonDetMultiThreadedAugmenter(data_loader=dl_val,
                                                      transform=None, num_processes=max(1, allowed_num_processes // 2),
                                                      num_cached=max(3, allowed_num_processes // 4), seeds=None,
                                                      pin_memory=self.device.type == 'cuda', wait_time=0.002)
        _ = next(mt_gen_train)
        _ = next(mt_gen_val)
        return mt_gen_train, mt_gen_val

    def do_split(self):
        splits_file = join(self.preprocessed_dataset_folder_base, "splits_final.json")
        if self.fold != "all" and not isfile(splits_file):
            self.print_to_log_file("Creating new 5-fold cross-validation split, stratified by modality...")
            identifiers = infer_dataset_class(self.preprocessed_dataset_folder).get_identifiers(
                self.preprocessed_dataset_folder)
            # written aside and renamed: runs started together (several folds, `nnunet-cin compare -j`) may all
            # create it; each writes the same seeded split, and none may read a half-written file
            partial = f"{splits_file}.{os.getpid()}.partial"
            save_json(stratified_crossval_split(identifiers, {k: self.lookup.name_of(k) for k in identifiers}),
                      partial)
            os.replace(partial, splits_file)
        tr_keys, val_keys = super().do_split()
        if self.single_modality is not None:
            tr_keys = [k for k in tr_keys if self.lookup.name_of(k) == self.single_modality]
            val_keys = [k for k in val_keys if self.lookup.name_of(k) == self.single_modality]
            self.print_to_log_file(f"{self.single_modality} only: {len(tr_keys)} training and {len(val_keys)} "
                                   f"validation cases.")
        return tr_keys, val_keys

    # ------------------------------------------------------------------------------------------------- checkpoints
    def checkpoint_entries(self) -> dict:
        """What our checkpoints hold on top of nnU-Net's entries."""
        return {"modalities": list(self.modalities),  # the conditioning order (CIN rows)
                "cin": {"conditioned": self.conditioned, "single_modality": self.single_modality,
                        "modality_sampling": self.modality_sampling, "modality_shares": self.modality_shares,
                        "dataset_modalities": list(self.lookup.modalities)}}

    def save_checkpoint(self, filename: str) -> None:
        # nnUNetTrainer.save_checkpoint of nnU-Net 2.8.1, copied (the dict is built inline, no hook to extend it);
        # the only change: **self.checkpoint_entries().
        if self.local_rank == 0:
            if not self.disable_checkpointing:
                checkpoint = {
                    'network_weights': unwrap(self.network).state_dict(),
                    'optimizer_state': self.optimizer.state_dict(),
                    'grad_scaler_state': self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
                    'logging': self.logger.get_checkpoint(),
                    '_best_ema': self._best_ema,
                    'current_epoch': self.current_epoch + 1,
                    'init_args': self.my_init_kwargs,
                    'trainer_name': self.__class__.__name__,
                    'inference_allowed_mirroring_axes': self.inference_allowed_mirroring_axes,
                    **self.checkpoint_entries(),
                }
                torch.save(checkpoint, filename)
            else:
                self.print_to_log_file('No checkpoint written, checkpointing is disabled')

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's, after checking that the checkpoint serves the same modalities in the same order."""
        saved = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location='cpu', weights_only=False, mmap=True)
        recorded = saved.get("modalities")
        if recorded is not None and list(recorded) != self.modalities:
            where = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "the checkpoint"
            raise ValueError(f"{where} was trained for modalities {list(recorded)} (in this order); {type(self).__name__}"
                             f" on this dataset serves {self.modalities}")
        del saved
        super().load_checkpoint(filename_or_checkpoint)

    # ------------------------------------------------------------------------------------------- final validation
    def perform_actual_validation(self, save_probabilities: bool = False):
        with self._conditioned_case_loading():
            super().perform_actual_validation(save_probabilities)
        summary_file = join(self.output_folder, 'validation', 'summary.json')
        if self.local_rank == 0 and isfile(summary_file):
            table = add_per_modality_summary(summary_file, self.lookup.name_of, self.dataset_json, self.modalities)
            self.print_to_log_file("Validation Dice per modality:\n" + table, also_print_to_console=True,
                                   add_timestamp=False)

    @contextmanager
    def _conditioned_case_loading(self):
        """nnU-Net's final validation loads a case, then predicts it with its predictor: while it does, the network
        is conditioned on the modality of the case loaded last."""
        if not self.conditioned:
            yield
            return
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        trainer, base, current = self, self.dataset_class, ExitStack()

        class ConditioningDataset(base):
            def load_case(self, identifier):
                current.close()
                current.enter_context(condition(trainer.network, trainer.lookup.index_of(identifier)))
                return super().load_case(identifier)

        self.dataset_class = ConditioningDataset
        try:
            yield
        finally:
            current.close()
            self.dataset_class = base


add_schedules(nnUNetTrainerCIN, globals())
