"""nnUNetTrainerCIN: nnU-Net's trainer, plus modality.

One conditional network for all modalities of a dataset. What changes against nnUNetTrainer:
- the network: the plans' U-Net with CIN in its encoder. `plans_for_training` (a classmethod: a function of the
  trainer class and the dataset's plans) writes the architecture each trainer trains and the modalities the model
  serves into its copy of the plans, which nnU-Net saves as the model folder's plans.json;
  `build_network_architecture` builds that network from the dataset's plans and from a model folder's plans.json
  alike. Subclasses change the network by overriding `configuration_for_training` (the transformer trainers:
  nnunet_cin.training.transformer_trainers)
- every forward pass (training, validation, final validation) runs inside `nnunet_cin.condition(network, m)`, m the
  modality of each sample, looked up from the batch's case keys (nnunet_cin.training.conditioning)
- batches: nnunet_cin.training.sampling.ModalityDataLoader (mixed modalities, configurable shares, or alternating)
- one modality per case, resolved once: the trainer builds the dataset.json rules once, refuses rule drift (a case
  whose modality by the rules is not the one it was preprocessed as stops the trainer before it starts;
  nnunet_cin.preprocessing.drift) and then takes each case's modality from what preprocessing stored
- folds: stratified by modality when nnU-Net creates splits_final.json (nnunet_cin.training.splits)
- reporting: pseudo-Dice per modality each epoch and per-modality means in validation/summary.json
  (nnunet_cin.training.reporting)
- checkpoints: nnU-Net's own; the modalities travel in the plans they hold (init_args; nnunet_cin.plans
  .checkpoint_modalities); `--c` refuses a checkpoint made for other modalities
- -pretrained_weights: nnU-Net's own loader; other layouts are converted first (nnunet_cin.training.convert_pretrained)
- checkpoint_latest.pth: also every tenth of the schedule and every 5 minutes (nnU-Net: every 50 epochs), so that
  `--c` continues short runs too (nnunet_cin.training.resume); every checkpoint is written aside, then renamed;
  `--c` with a checkpoint that cannot be read names it and loads the next readable one
- seeding: `seed` (class attribute) or $nnUNet_cin_seed seeds every random stream of the run; checkpoints record the
  seed and the generators' states in init_args, so `--c` continues the streams (nnunet_cin.training.mixins.Seeded,
  nnunet_cin.training.seeding)
- schedules: nnunet_cin.training.mixins.ShortSchedule; the `_1epoch` ... `_250epochs` variants are literal classes in
  nnunet_cin.training.training_length
Where nnU-Net 2.8.1 has no hook (nnUNetTrainer.get_dataloaders) its method body is copied, marked as such and registered in
nnunet_cin/nnunet_copies.py.

Options: class attributes of a subclass, or set in its __init__ after super().__init__ (like nnU-Net's
hyperparameters); they take effect when the data loaders are built (on_train_start):
    modality_sampling = "mixed" | "alternate"
    modality_shares = "equal" | "proportional" | {"CT": 2, "MR": 1}
    latest_checkpoint_epochs = None (a tenth of num_epochs, at least 1) | N
    latest_checkpoint_minutes = 5.0 | None (no time limit)
Options of the network (class attributes only: the plans are written before __init__ runs):
    conditioned = True | False (the baselines' plain network)
    single_modality = None | "MR" (nnUNetTrainerSingleModality_MR: one modality's cases, plain network)
    cin_scope = None | "encoder" | "all" (CIN in every instance norm); None: the plans' `cin_scope`, else "encoder"
    adapters = False | True (every modality its residual adapters, nnunet_cin.networks.adapters; needs
        cin_scope "all"); plans whose architecture lists `adapter_modalities` keep theirs

NOTE: nnU-Net imports the files of this folder as top-level modules; shared code is imported absolutely
(`from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN`), never relatively.
"""
import functools
import inspect
import os
import warnings
from contextlib import ExitStack, contextmanager, nullcontext
from copy import deepcopy
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import isfile, join, save_json
from nnunetv2.inference import predict_from_raw_data as nnunet_predict
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import distributed as dist
from torch import nn

from nnunet_cin.cin import condition
from nnunet_cin.modalities import ModalityError, ModalityRules
from nnunet_cin.networks.unet import ADAPTERS_KEY, conditional_architecture, plain_architecture
from nnunet_cin.plans import CINPlans, CINPlansError, checkpoint_modalities
from nnunet_cin.preprocessing.drift import refuse_rule_drift
from nnunet_cin.training.conditioning import ModalityLookup, split_by_modality
from nnunet_cin.training.reporting import (PER_MODALITY_KEY, ModalityLogger, add_per_modality_summary,
                                           merge_validation_outputs, pseudo_dice_per_modality)
from nnunet_cin.training.resume import (LatestCheckpointSchedule, checkpoint_to_continue, default_every_epochs,
                                        read_checkpoint)
from nnunet_cin.training.sampling import ModalityDataLoader
from nnunet_cin.training.mixins import OMPThreads, Seeded, ShortSchedule
from nnunet_cin.training.seeding import (RNG_STATE_KEY, SEED_ENV, TRAIN_LOADER, VAL_LOADER, checkpoint_seed,
                                         rng_state, set_rng_state, worker_seeds)
from nnunet_cin.training.splits import stratified_crossval_split

_warned_plain_plans = set()
# nnU-Net's own prediction commands (nnUNetv2_predict, _from_modelfolder): see _refuse_nnunet_predict_command
_NNUNET_PREDICT_COMMANDS = {nnunet_predict.predict_entry_point.__code__,
                            nnunet_predict.predict_entry_point_modelfolder.__code__}


class nnUNetTrainerCIN(ShortSchedule, Seeded, OMPThreads, nnUNetTrainer):
    conditioned = True  # False: plain network, same data pipeline (baselines)
    single_modality: Optional[str] = None  # train (and validate) on this modality only
    modality_sampling = "mixed"
    modality_shares = "equal"
    cin_scope: Optional[str] = None  # "encoder" | "all" (every instance norm); None: the plans' cin_scope, else encoder
    adapters = False  # True: every modality a residual adapter after each norm (unless the plans list some)
    # (schedule_epochs, schedule_iterations: ShortSchedule; seed: Seeded; nnunet_cin.training.mixins)
    latest_checkpoint_epochs: Optional[int] = None  # checkpoint_latest.pth at least this often; None: a tenth
    latest_checkpoint_minutes: Optional[float] = 5.0  # ... and once this much time has passed since the last one

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        rules = ModalityRules.from_dataset_json(dataset_json)  # this trainer's one resolution of the rules
        dataset_modalities = CINPlans(plans).training_modalities(rules)
        preprocessed = refuse_rule_drift(plans, configuration, rules)  # before nnU-Net's __init__ writes anything
        self.continuing = bool(plans.get("continue_training", False))  # --c (nnU-Net's __init__ pops the flag)
        super().__init__(type(self).plans_for_training(plans, configuration, dataset_json, rules), configuration,
                         fold, dataset_json, device)
        self.lookup = ModalityLookup(rules, dataset_modalities, preprocessed)
        # the modalities this model serves; for conditioned models also the CIN row order
        self.modalities: List[str] = CINPlans(self.plans_manager.plans).modalities
        self.logger.local_logger = ModalityLogger(self.modalities)
        # --c: restores the generators' states saved in the checkpoint (in on_train_start). A callable, so that
        # nnU-Net's debug.json (every non-callable attribute as text) does not list the states
        self._continue_random_streams: Optional[Callable[[], None]] = None

    # ----------------------------------------------------------------------------------------------------- seeding
    def on_train_start(self):
        super().on_train_start()  # Seeded: the network's and the data's streams; nnU-Net: the data loaders
        if self._continue_random_streams is not None:  # --c: continue the streams where the checkpoint left them
            self._continue_random_streams()
            self._continue_random_streams = None
        self.latest_checkpoints = LatestCheckpointSchedule(
            self.latest_checkpoint_epochs or default_every_epochs(self.num_epochs), self.latest_checkpoint_minutes)

    # ------------------------------------------------------------------------------------------------ the network
    @classmethod
    def plans_for_training(cls, plans: dict, configuration: str, dataset_json: Optional[dict],
                           rules: Optional[ModalityRules] = None) -> dict:
        """A copy of the dataset's `plans` in which `configuration` describes the network this trainer trains
        (`configuration_for_training`) and plans["cin"]["modalities"] the modalities the model serves: what the
        trainer trains with and nnU-Net saves as the model folder's plans.json. A function of the class and its
        arguments only (no trainer needed: nnunet_cin.training.convert_pretrained builds a trainer's network with it).
        dataset_json None: plans made by nnUNetv2_plan_and_preprocess_cin suffice (they record the modalities).
        `rules`: dataset_json's, when the caller has them already."""
        if rules is None and dataset_json is not None:
            rules = ModalityRules.from_dataset_json(dataset_json)
        modalities = CINPlans(plans).training_modalities(rules)
        if cls.single_modality is not None:
            if cls.single_modality not in modalities:
                raise ModalityError(f'{cls.__name__}: unknown modality "{cls.single_modality}"; this dataset\'s '
                                    f'modalities are {modalities}')
            modalities = [cls.single_modality]
        plans = CINPlans(plans).with_modalities(modalities)
        if not CINPlans(plans).per_modality_normalization and (cls.__name__, configuration) not in _warned_plain_plans:
            _warned_plain_plans.add((cls.__name__, configuration))
            warnings.warn(f"{cls.__name__}: these are plain nnU-Net plans ({plans.get('plans_name')}): intensity "
                          f"normalization is NOT per modality (one scheme and one set of statistics for "
                          f"{', '.join(modalities)}). Plan with nnUNetv2_plan_and_preprocess_cin for per-modality "
                          f"normalization.", stacklevel=3)
        resolved = PlansManager(plans).get_configuration(configuration).configuration
        trained = cls.configuration_for_training(resolved, modalities)
        # only what differs: an entry that inherits from another configuration keeps inheriting the rest
        plans["configurations"][configuration].update({k: v for k, v in trained.items() if resolved.get(k) != v})
        return plans

    @classmethod
    def configuration_for_training(cls, configuration: dict, modalities: Sequence[str]) -> dict:
        """The (resolved) plans configuration with the network this trainer trains: the plans' conv U-Net with CIN
        (conditioned), or plain. Applied to a configuration it returned, it returns it unchanged."""
        arch = configuration["architecture"]
        if cls.conditioned:
            scope = cls.cin_scope or arch["arch_kwargs"].get("cin_scope", "encoder")
            adapters = None  # the plans' own: a model folder's plans.json, or add-modality's extended plans
            if cls.adapters and ADAPTERS_KEY not in arch["arch_kwargs"]:
                adapters = range(len(modalities))
            arch = conditional_architecture(arch, len(modalities), scope, adapters)
        else:
            arch = plain_architecture(arch)
        return dict(configuration, architecture=arch)

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """nnU-Net's, on the configuration this trainer trains (`configuration_for_training`): the same network from
        the dataset's plans (those of nnUNetv2_plan_and_preprocess_cin, which record the modalities) as from the
        plans.json of a model folder (what nnU-Net's predictor hands it)."""
        _refuse_nnunet_predict_command(cls, plans_manager)
        modalities = CINPlans(plans_manager.plans).modalities
        if not modalities:
            raise CINPlansError(f"{cls.__name__}: plans {plans_manager.plans_name!r} record no modalities (plain "
                                f"nnU-Net plans); build from {cls.__name__}.plans_for_training(plans, configuration, "
                                f"dataset_json)")
        trained = ConfigurationManager(cls.configuration_for_training(configuration_manager.configuration, modalities))
        return super().build_network_architecture(plans_manager, trained, num_input_channels, num_output_channels,
                                                  enable_deep_supervision)

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
        epoch, last = self.current_epoch, self.current_epoch == self.num_epochs - 1
        nnunet_writes_latest = (epoch + 1) % self.save_every == 0 and not last  # nnU-Net's on_epoch_end rule
        super().on_epoch_end()
        due = self.latest_checkpoints.epoch_ended()
        if self.is_ddp:  # every rank writes (a seeded run gathers the ranks' generator states): rank 0's clock decides
            decision = [due]
            dist.broadcast_object_list(decision, src=0)
            due = decision[0]
        if nnunet_writes_latest:
            self.latest_checkpoints.written()
        elif due and not last:  # after the last epoch, checkpoint_final.pth follows
            self.save_latest_checkpoint()

    # -------------------------------------------------------------------------------------------------------- data
    def modality_data_loader(self, dataset, patch_size, final_patch_size, transforms, training: bool):
        """nnU-Net's nnUNetDataLoader, told each case's modality (nnunet_cin.training.sampling). Validation batches are always
        mixed with equal shares, so that every modality gets its pseudo-Dice."""
        if training:
            self.print_to_log_file(f"Batches: {self.modality_sampling} modalities, shares {self.modality_shares} "
                                   f"({', '.join(self.lookup.modalities)})")
        return ModalityDataLoader(
            dataset, self.batch_size, patch_size, final_patch_size, self.label_manager,
            oversample_foreground_percent=self.oversample_foreground_percent, pad_sides=None, transforms=transforms,
            probabilistic_oversampling=self.probabilistic_oversampling,
            case_modality_index={k: self.lookup.model_index_of(k) for k in dataset.identifiers},
            modalities=self.lookup.modalities,
            shares=self.modality_shares if training else "equal",
            mode=self.modality_sampling if training else "mixed",
            # alternate: continue the modality cycle where an interrupted run stopped (--c)
            first_batch=self.current_epoch * self.num_iterations_per_epoch if training else 0,
            num_workers=max(1, get_allowed_n_proc_DA()))

    def get_dataloaders(self):
        # nnUNetTrainer.get_dataloaders of nnU-Net 2.8.1, copied (it builds nnUNetDataLoader inline, there is no hook
        # for the loader class); the changes: self.modality_data_loader instead of nnUNetDataLoader, and the workers'
        # seeds (self.augmentation_seeds; None when unseeded, as in nnU-Net).
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
                                                        num_cached=max(6, allowed_num_processes // 2),
                                                        seeds=self.augmentation_seeds(TRAIN_LOADER,
                                                                                      allowed_num_processes),
                                                        pin_memory=self.device.type == 'cuda', wait_time=0.002)
            mt_gen_val = NonDetMultiThreadedAugmenter(data_loader=dl_val,
                                                      transform=None, num_processes=max(1, allowed_num_processes // 2),
                                                      num_cached=max(3, allowed_num_processes // 4),
                                                      seeds=self.augmentation_seeds(
                                                          VAL_LOADER, max(1, allowed_num_processes // 2)),
                                                      pin_memory=self.device.type == 'cuda', wait_time=0.002)
        _ = next(mt_gen_train)
        _ = next(mt_gen_val)
        return mt_gen_train, mt_gen_val

    def augmentation_seeds(self, loader: int, num_workers: int) -> Optional[list]:
        """Seeds of nnU-Net's augmentation workers (NonDetMultiThreadedAugmenter's `seeds=`); None when unseeded."""
        return worker_seeds(self.seed, self.local_rank, self.current_epoch, loader, num_workers)

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
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's, written under a temporary name and then renamed, so that a run killed while writing leaves the
        previous checkpoint intact. A seeded run's checkpoint also holds the global generators' states, for --c:
        nnU-Net's checkpoint has no entry for them, so they travel in init_args (saved as it is, like the seed), for
        this write only. Under DDP every rank draws its own streams: the states of all ranks, gathered ({"ranks":
        [state of rank 0, state of rank 1, ...]}), so every rank calls this (as nnU-Net's on_epoch_end and
        on_train_end do)."""
        if self.seed is not None:
            self.my_init_kwargs[RNG_STATE_KEY] = self._rng_states()
        aside = f"{filename}.partial"
        try:
            super().save_checkpoint(aside)
        finally:
            self.my_init_kwargs.pop(RNG_STATE_KEY, None)
        if self.local_rank == 0 and not self.disable_checkpointing:  # (else nnU-Net wrote nothing)
            os.replace(aside, filename)

    def _rng_states(self) -> dict:
        if not self.is_ddp:
            return rng_state()
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, rng_state())
        return {"ranks": states}

    def save_latest_checkpoint(self) -> None:
        # called after nnU-Net's on_epoch_end counted the epoch; save_checkpoint records current_epoch + 1 as the
        # epoch to continue at, so step back one, as nnU-Net's on_train_end does for checkpoint_final.pth
        self.current_epoch -= 1
        try:
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
        finally:
            self.current_epoch += 1
        self.latest_checkpoints.written()

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's, after checking that the checkpoint serves the same modalities in the same order (and, for --c,
        the same seed). A file that cannot be read is named; with --c the next readable one of nnU-Net's --c order is
        loaded instead (nnunet_cin.training.resume)."""
        if isinstance(filename_or_checkpoint, dict):
            saved, where = filename_or_checkpoint, "the checkpoint"
        elif self.continuing:
            filename_or_checkpoint, saved, skipped = checkpoint_to_continue(filename_or_checkpoint)
            for problem in skipped:
                self.print_to_log_file(f"WARNING: {problem}. Continuing from {filename_or_checkpoint} instead, at "
                                       f"epoch {saved['current_epoch']}; the next checkpoint written replaces the "
                                       f"broken file.")
            where = filename_or_checkpoint
        else:
            saved, where = read_checkpoint(filename_or_checkpoint), filename_or_checkpoint
        recorded = checkpoint_modalities(saved)
        if recorded is not None and list(recorded) != self.modalities:
            raise ValueError(f"{where} was trained for modalities {list(recorded)} (in this order); {type(self).__name__}"
                             f" on this dataset serves {self.modalities}")
        state = self.rng_state_to_continue(saved, where)
        self._continue_random_streams = functools.partial(set_rng_state, state) if state is not None else None
        del saved
        super().load_checkpoint(filename_or_checkpoint)
        self.my_init_kwargs.pop(RNG_STATE_KEY, None)  # (nnU-Net took init_args from the checkpoint)

    def rng_state_to_continue(self, saved: dict, where: str) -> Optional[dict]:
        """--c continues a run with the seed it was started with (refused otherwise: the continued run would be
        neither the old seed's nor the new one's); the generators' states it saved are restored in on_train_start
        (under DDP each rank its own; with another number of ranks than the run had, the streams start afresh from
        the seed, as without --c)."""
        if not self.continuing:
            return None
        recorded = checkpoint_seed(saved)
        if recorded != self.seed:
            def text(seed):
                return "no seed" if seed is None else f"seed {seed}"
            fix = f"{SEED_ENV}={recorded}" if recorded is not None else f"{SEED_ENV} unset"
            raise ValueError(f"{where} was trained with {text(recorded)}, this run has {text(self.seed)}: --c "
                             f"continues a run with the seed it was started with. Continue it with {fix}, or train "
                             f"the new seed in another results folder (another nnUNet_results or trainer name).")
        state = (saved.get("init_args") or {}).get(RNG_STATE_KEY)
        if state is None:
            return None
        world_size = dist.get_world_size() if self.is_ddp else 1
        ranks = state["ranks"] if "ranks" in state else [state]
        if len(ranks) != world_size:
            self.print_to_log_file(f"{where} holds the random streams of {len(ranks)} process(es), this run has "
                                   f"{world_size}: the streams start afresh from the seed")
            return None
        return deepcopy(ranks[self.local_rank])

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
                current.enter_context(condition(trainer.network, trainer.lookup.model_index_of(identifier)))
                return super().load_case(identifier)

        self.dataset_class = ConditioningDataset
        try:
            yield
        finally:
            current.close()
            self.dataset_class = base



def _refuse_nnunet_predict_command(trainer: type, plans_manager: PlansManager):
    """nnU-Net's own nnUNetv2_predict (and nnUNetv2_predict_from_modelfolder) builds the network of a model folder
    with its trainer's build_network_architecture, then has no way to tell the network each case's modality, nor to
    find our preprocessor (its lookup gives None: "'NoneType' object is not callable"). Stop it here, before anything
    is read or written, with the command that can: nnUNetv2_predict_cin. Only nnU-Net's commands are stopped
    (nnUNetPredictor used from Python, e.g. inside `condition(...)`, is left alone), and only for models nnU-Net
    cannot serve as they are (a conditional network, or per-modality normalization)."""
    per_modality = CINPlans(plans_manager.plans).per_modality_normalization
    if not trainer.conditioned and not per_modality:
        return
    frame = inspect.currentframe()
    while frame is not None and frame.f_code not in _NNUNET_PREDICT_COMMANDS:
        frame = frame.f_back
    if frame is not None:
        needs = " and ".join((["each case's modality for its CIN layers"] if trainer.conditioned else []) +
                             (["per-modality intensity normalization"] if per_modality else []))
        raise RuntimeError(f"{trainer.__name__} models need {needs}, which nnU-Net's own nnUNetv2_predict cannot "
                           f"provide: predict with nnUNetv2_predict_cin (the same arguments, plus -m MODALITY or the "
                           f"dataset.json modality rules)")
