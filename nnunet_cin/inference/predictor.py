"""nnUNetPredictorCIN: nnU-Net's predictor, with each case preprocessed and predicted as its modality.

Why a module of its own: the predictor is what Python users call (as they call nnU-Net's nnUNetPredictor) and what
the commands (nnunet_cin.inference.command) drive; argument parsing and signal handling
(nnunet_cin.inference.signals) are no part of it.

How a case's modality reaches the network, one step each:
1. Decided once per run, before anything is written (`prepare_run`; nnunet_cin.inference.decisions): the override
   (`modality_override`, -m NAME) for all cases, else the rules of the model's dataset.json, each case checked by the
   modality check; `modality_override = "auto"`: each case recognised. Arrays: their properties["modality"], else
   the override.
2. Carried in each case's properties: the run's preprocessing, inside nnU-Net's own data iterators (the
   configuration manager hands them nnunet_cin.inference.preprocessing's `ModalityPreprocessor`), normalizes the
   case as its modality and writes properties["modality"] and properties["modality_index"].
3. Read from the properties: every case's sliding-window prediction (all patches, mirrored copies, every fold of an
   ensemble) runs inside `nnunet_cin.condition(network, modality_index)` of the case's properties
   (`_take_case`). nnU-Net's data iterator yields each case with its properties; where nnU-Net preprocesses in this
   process and predicts without handing the properties on (its sequential loop, predict_single_npy_array), the
   preprocessor hands them over by one callback (`ModalityConfigurationManager.on_case_preprocessed`). Plain networks
   (Joint / single-modality baselines) are not conditioned, but still get per-modality preprocessing.
Around it: the inputs and the output are checked (nnunet_cin.inference.checks), outputs are written complete or not
at all, and --continue_prediction re-predicts incomplete ones (nnunet_cin.inference.outputs).
Every method keeps the signature of nnU-Net's nnUNetPredictor (nnU-Net records predict_from_files' arguments by
inspecting its signature) and wraps nnU-Net's own bodies. Everything else (sliding window, Gaussian weighting,
mirroring, fold ensembling, resampling, export, --save_probabilities, -num_parts/-part_id) is nnU-Net's: the outputs
are nnU-Net's, so nnUNetv2_ensemble and nnUNetv2_apply_postprocessing work on them as usual.
"""
import os
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, save_json, subdirs
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_cin.cin import cin_layers, condition
from nnunet_cin.inference.checks import check_input_dimensions, check_prediction_inputs_and_outputs
from nnunet_cin.inference.decisions import OVERRIDE_ATTRIBUTE, ModalityDecisions, tell
from nnunet_cin.inference.modality_check import CaseModality, record_decisions
from nnunet_cin.inference.outputs import OutputPlansManager, StagingFolders, why_unfinished
from nnunet_cin.inference.preprocessing import ModalityConfigurationManager
from nnunet_cin.modalities import ModalityError, ModalityRules
from nnunet_cin.plans import CINPlans, checkpoint_modalities


class nnUNetPredictorCIN(nnUNetPredictor):
    """nnU-Net's predictor for models of nnunet-cin: every case is preprocessed with its modality's normalization and
    (for conditional networks) predicted with the network conditioned on its modality. Every method keeps nnU-Net's
    signature; the overrides add the modality around nnU-Net's own bodies.

    State: `modality_override` (default None): the modality of every case this predictor is given
    (nnUNetv2_predict_cin -m NAME, or "auto": each case recognised). None: each input file's case from the model's
    dataset.json rules; each array's from its properties["modality"]. `check_modalities` (default True): the modality
    check (False: --skip-modality-check).
    After `initialize_from_trained_model_folder`: `modalities` (the model's, in conditioning order, from its
    checkpoints), `decisions` (what decides each case's modality: the model's dataset.json rules and the modality
    check of its plans; nnunet_cin.inference.decisions) and `conditioned` (whether the network has CIN layers).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.modality_override: Optional[str] = None
        self.check_modalities = True
        self.modality_flag = "-m"  # how messages name the override (the from_modelfolder command: --modality)
        self.modalities: Optional[List[str]] = None
        self.decisions: Optional[ModalityDecisions] = None
        self.conditioned = False
        self.model_folder: Optional[str] = None
        self._case_modality: Optional[str] = None  # of the case being predicted: read from its properties
        self._staging: Optional[StagingFolders] = None  # where the current run writes unfinished outputs
        self._prepared: Optional[Tuple[tuple, Dict[str, CaseModality]]] = None  # see `prepare_run`
        self._run_decisions: Dict[str, CaseModality] = {}  # of the current run: recorded in modalities.json

    # ------------------------------------------------------------------------------------------------ model loading
    def initialize_from_trained_model_folder(self, model_training_output_dir: str,
                                             use_folds: Union[Tuple[Union[int, str]], None],
                                             checkpoint_name: str = 'checkpoint_final.pth'):
        """nnU-Net's, plus: clear errors for a missing model folder or fold, and the model's modalities (recorded in
        every fold's checkpoint: nnunet_cin.plans.checkpoint_modalities; all folds must agree; else the model
        folder's plans.json)."""
        folds = check_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        super().initialize_from_trained_model_folder(model_training_output_dir, folds, checkpoint_name)
        self.model_folder = model_training_output_dir
        recorded = [checkpoint_modalities(torch.load(join(model_training_output_dir, f'fold_{f}', checkpoint_name),
                                                     map_location='cpu', weights_only=False, mmap=True))
                    for f in folds]
        if any(r != recorded[0] for r in recorded):
            raise ModalityError(f"the folds {list(folds)} of {model_training_output_dir} were trained for different "
                                f"modalities: {recorded}")
        modalities = recorded[0] or CINPlans(self.plans_manager.plans).modalities
        self.set_modalities(modalities, source=join(model_training_output_dir, 'dataset.json'))

    def set_modalities(self, modalities: Optional[Sequence[str]], source: Optional[str] = None):
        """The model's modalities (conditioning order), what decides the modality of new cases (the model's
        dataset.json rules, built here: once per model), and the managers through which nnU-Net's workers preprocess
        per modality and write complete outputs. Called by `initialize_from_trained_model_folder`; call it after
        nnU-Net's `manual_initialization`."""
        if not modalities:
            raise ModalityError(f"the model ({self.trainer_name}) records no modalities (no checkpoint['modalities'], "
                                f"no plans['cin']['modalities']): it was not trained by an nnunet-cin trainer; use "
                                f"nnUNetv2_predict for plain nnU-Net models")
        self.modalities = list(modalities)
        layers = cin_layers(self.network)
        self.conditioned = bool(layers)
        if layers and layers[0].num_modalities != len(self.modalities):
            raise ModalityError(f"the network has {layers[0].num_modalities} modality rows per CIN layer but the "
                                f"checkpoint records {len(self.modalities)} modalities {self.modalities}")
        plans = self.plans_manager.plans
        self.configuration_manager = ModalityConfigurationManager(
            self.configuration_manager.configuration, CINPlans(plans).per_modality_normalization, self.modalities)
        self.plans_manager = OutputPlansManager(plans, self.dataset_json['file_ending'])
        self.decisions = ModalityDecisions(
            self.modalities, ModalityRules.from_dataset_json(self.dataset_json, source=source), plans,
            self.plans_manager.image_reader_writer_class, self.dataset_json['file_ending'])

    # -------------------------------------------------------------------------------------------- deciding a run
    def decide_modalities(self, list_of_lists: List[List[str]]) -> Dict[str, CaseModality]:
        """{case id: CaseModality} of every input case (its image files: one list per case), by `modality_override`
        or the model's rules, checked by the modality check unless `check_modalities` is False
        (ModalityDecisions.of_files). Prints the decision of every case; writes nothing."""
        if self.decisions is None:
            raise RuntimeError("initialize the predictor first (initialize_from_trained_model_folder)")
        return self.decisions.of_files(list_of_lists, self.modality_override, self.check_modalities,
                                       self.modality_flag)

    def modalities_of_cases(self, list_of_lists: List[List[str]]) -> Dict[str, str]:
        """{case id: modality name} of every input case; see `decide_modalities`."""
        return {case: d.modality for case, d in self.decide_modalities(list_of_lists).items()}

    def prepare_run(self, list_of_lists_or_source_folder: Union[str, List[List[str]]],
                    output_folder_or_list_of_truncated_output_files: Union[str, None, List[str]],
                    part_id: int = 0, num_parts: int = 1, checked_lists: Optional[List[List[str]]] = None
                    ) -> Dict[str, CaseModality]:
        """Check a run's inputs and outputs and decide every case's modality, writing nothing (an error stops the run
        before its output folder exists). The next predict_from_files(_sequential) with the same arguments predicts
        with these decisions instead of deciding again; called by itself otherwise. `checked_lists`: the input lists
        as check_prediction_inputs_and_outputs returned them to a caller that checked before loading the model
        (nnUNetv2_predict_cin), not checked again."""
        arguments = (list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files, part_id,
                     num_parts)
        lists = checked_lists
        if lists is None:
            lists = check_prediction_inputs_and_outputs(list_of_lists_or_source_folder,
                                                        output_folder_or_list_of_truncated_output_files,
                                                        self.dataset_json)
        check_input_dimensions(lists, len(self.configuration_manager.patch_size), self.model_folder or "")
        decisions = self.decide_modalities(lists[part_id::num_parts])
        self._prepared = (arguments, decisions)
        return decisions

    @contextmanager
    def _prediction_run(self, list_of_lists_or_source_folder: Union[str, List[List[str]]],
                        output_folder_or_list_of_truncated_output_files: Union[str, None, List[str]],
                        part_id: int = 0, num_parts: int = 1):
        """One run of nnU-Net's predict_from_files(_sequential): the run's decisions (`prepare_run`, made now unless
        made for these arguments already) handed to the run's preprocessing, which writes them into each case's
        properties; outputs staged."""
        arguments = (list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files, part_id,
                     num_parts)
        if self._prepared is None or self._prepared[0] != arguments:
            self.prepare_run(*arguments)
        (_, self._run_decisions), self._prepared = self._prepared, None
        self.configuration_manager.run_modalities = {c: d.modality for c, d in self._run_decisions.items()}
        try:
            with self._staged_outputs():
                yield
        finally:
            self.configuration_manager.run_modalities = {}
            self._run_decisions = {}

    @contextmanager
    def _staged_outputs(self):
        """Outputs written inside this block go to staging folders first (nnunet_cin.inference.outputs); whatever is
        unfinished when it ends (an error, Ctrl-C, SIGTERM) is removed with them."""
        if self._staging is not None:  # already inside a run
            yield self._staging
            return
        self._staging = StagingFolders()
        try:
            yield self._staging
        finally:
            self._staging.close()
            self._staging = None

    # ------------------------------------------------------------------------------------ the case being predicted
    def _take_case(self, properties: dict):
        """The one way a case's modality reaches the network: the properties its preprocessing wrote."""
        modality = properties.get("modality")
        if modality is None:
            raise ModalityError("a preprocessed case carries no properties['modality']; preprocess with "
                                "nnunet_cin's preprocessor (predict_from_files / get_data_iterator_*)")
        self._case_modality = self.decisions.name(modality)

    @contextmanager
    def conditioned_on(self, modality: Optional[str]):
        """Predictions inside this block (predict_logits_from_preprocessed_data on data you preprocessed) are for a
        case of `modality` (None: no case)."""
        previous = self._case_modality
        try:
            if modality is None:
                self._case_modality = None
            else:
                self._take_case({"modality": modality})
            yield
        finally:
            self._case_modality = previous

    @contextmanager
    def _cases_from_preprocessing(self):
        """nnU-Net's sequential loop and predict_single_npy_array preprocess a case in this process, then predict it
        without its properties: the preprocessor hands them over as soon as it has written them."""
        previous = self._case_modality
        self.configuration_manager.on_case_preprocessed = self._take_case
        try:
            yield
        finally:
            self.configuration_manager.on_case_preprocessed = None
            self._case_modality = previous

    def _cases_conditioned(self, data_iterator):
        """nnU-Net's predict_from_data_iterator takes a case from the iterator, then predicts it: the properties of
        the case taken last."""
        for item in data_iterator:
            self._take_case(item['data_properties'])
            yield item

    # -------------------------------------------------------------------------------------------------- prediction
    @torch.inference_mode()
    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> Union[np.ndarray, torch.Tensor]:
        """nnU-Net's sliding window (all patches, mirrored copies), inside condition(network, the case's modality
        index)."""
        if not self.conditioned:
            return super().predict_sliding_window_return_logits(input_image)
        if self._case_modality is None:
            raise RuntimeError(f"the modality of this case is unknown: predict through predict_from_files / "
                               f"predict_single_npy_array (with {OVERRIDE_ATTRIBUTE} or properties['modality']), or "
                               f"inside `with predictor.conditioned_on(NAME):`")
        with condition(self.network, self.modalities.index(self._case_modality)):
            return super().predict_sliding_window_return_logits(input_image)

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = default_num_processes):
        previous = self._case_modality
        try:
            return super().predict_from_data_iterator(self._cases_conditioned(data_iterator), save_probabilities,
                                                      num_processes_segmentation_export)
        finally:
            self._case_modality = previous
            if isinstance(data_iterator, MultiThreadedAugmenter):  # nnU-Net finishes it only when it sees it
                data_iterator._finish()

    def predict_from_files(self, list_of_lists_or_source_folder: Union[str, List[List[str]]],
                           output_folder_or_list_of_truncated_output_files: Union[str, None, List[str]],
                           save_probabilities: bool = False, overwrite: bool = True,
                           num_processes_preprocessing: int = default_num_processes,
                           num_processes_segmentation_export: int = default_num_processes,
                           folder_with_segs_from_prev_stage: str = None, num_parts: int = 1, part_id: int = 0):
        """nnU-Net's, with the inputs and outputs checked (nnunet_cin.inference.checks) and every case's modality
        decided before anything is written (`prepare_run`), then handed to nnU-Net's preprocessing workers."""
        if not 0 <= part_id < num_parts:
            raise ValueError(f"part_id must be in 0..{num_parts - 1} (num_parts={num_parts}), got {part_id}")
        with self._prediction_run(list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                                  part_id, num_parts):
            return super().predict_from_files(
                list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files, save_probabilities,
                overwrite, num_processes_preprocessing, num_processes_segmentation_export,
                folder_with_segs_from_prev_stage, num_parts, part_id)

    def predict_from_files_sequential(self, list_of_lists_or_source_folder: Union[str, List[List[str]]],
                                      output_folder_or_list_of_truncated_output_files: Union[str, None, List[str]],
                                      save_probabilities: bool = False, overwrite: bool = True,
                                      folder_with_segs_from_prev_stage: str = None):
        """nnU-Net's (no multiprocessing), with the checks and every case's modality first, as predict_from_files."""
        with self._prediction_run(list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files), \
                self._cases_from_preprocessing():
            return super().predict_from_files_sequential(
                list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files, save_probabilities,
                overwrite, folder_with_segs_from_prev_stage)

    def _manage_input_and_output_lists(self, list_of_lists_or_source_folder: Union[str, List[List[str]]],
                                       output_folder_or_list_of_truncated_output_files: Union[None, str, List[str]],
                                       folder_with_segs_from_prev_stage: str = None, overwrite: bool = True,
                                       part_id: int = 0, num_parts: int = 1, save_probabilities: bool = False):
        """nnU-Net's, which predict_from_files(_sequential) call right after writing the run's arguments
        (predict_from_raw_data_args.json, from their signature) and before predicting. Changes: the run's arguments
        name the modality, and modalities.json records the modality of each case of the run; with overwrite=False
        (--continue_prediction) a case counts as predicted when all its outputs read back completely (nnU-Net: when
        they exist); outputs are staged (see `_staged_outputs`)."""
        folder = self._record_arguments(output_folder_or_list_of_truncated_output_files)
        lists, outputs, prev_stage = super()._manage_input_and_output_lists(
            list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
            folder_with_segs_from_prev_stage, True, part_id, num_parts, save_probabilities)
        if outputs is None:
            return lists, outputs, prev_stage
        if not overwrite:
            todo = []
            for i, output in enumerate(outputs):
                problem = why_unfinished(output, self.dataset_json['file_ending'], save_probabilities,
                                         self.plans_manager.image_reader_writer_class)
                if problem is not None:
                    todo.append(i)
                    if "cannot be read" in problem:
                        print(f"{problem}: predicting {os.path.basename(output)} again")
            print(f"overwrite was set to {overwrite}, so I am only working on cases whose outputs are missing or "
                  f"incomplete. That's {len(todo)} cases.")
            kept = [os.path.basename(o) for i, o in enumerate(outputs) if i not in set(todo)]
            lists, outputs, prev_stage = ([x[i] for i in todo] for x in (lists, outputs, prev_stage))
        else:
            kept = []
        self._record_modality(folder, kept)
        if self._staging is not None:
            outputs = [self._staging.stage(o) for o in outputs]
        return lists, outputs, prev_stage

    def _record_arguments(self, output_folder_or_list_of_truncated_output_files) -> Optional[str]:
        """The run's arguments (nnU-Net's predict_from_raw_data_args.json) name the modality; returns the output
        folder (None: no output files)."""
        if isinstance(output_folder_or_list_of_truncated_output_files, str):
            folder = output_folder_or_list_of_truncated_output_files
        elif isinstance(output_folder_or_list_of_truncated_output_files, list):
            folder = os.path.dirname(output_folder_or_list_of_truncated_output_files[0]) or os.curdir
        else:
            return None
        args_file = join(folder, 'predict_from_raw_data_args.json')
        if isfile(args_file):
            save_json({**load_json(args_file), "modality": self.modality_override,
                       "check_modalities": self.check_modalities}, args_file)
        return folder

    def _record_modality(self, folder: Optional[str], kept: Sequence[str]):
        """modalities.json: this run's decision for every case it predicts; the earlier record stays for the outputs
        --continue_prediction keeps (`kept`: their case ids), and a kept output this run would predict as another
        modality is reported."""
        if folder is None or not self._run_decisions:
            return
        conflicts = record_decisions(folder, self._run_decisions, kept=kept)
        if conflicts:
            tell(f"{len(conflicts)} output(s) kept by --continue_prediction were predicted as another modality than "
                 f"this run gives them; they are not predicted again (modalities.json keeps what they were predicted "
                 f"with). Delete them, or predict into a new folder, to predict them as given:\n" +
                 "\n".join(f"  - {c}: predicted as {was}, this run: {now}" for c, was, now in conflicts),
                 warning=True)

    # ----------------------------------------------------------------------------------------------------- arrays
    def _arrays_with_modality(self, images: List[np.ndarray], properties: List[dict]) -> List[dict]:
        return self.decisions.of_arrays(images, properties, self.modality_override, self.check_modalities)

    def get_data_iterator_from_raw_npy_data(self, image_or_list_of_images: Union[np.ndarray, List[np.ndarray]],
                                            segs_from_prev_stage_or_list_of_segs_from_prev_stage: Union[
                                                None, np.ndarray, List[np.ndarray]],
                                            properties_or_list_of_properties: Union[dict, List[dict]],
                                            truncated_ofname: Union[str, List[str], None],
                                            num_processes: int = 3):
        """nnU-Net's; each image's modality: its properties["modality"], else `modality_override`."""
        props = properties_or_list_of_properties
        images = image_or_list_of_images if isinstance(image_or_list_of_images, list) else [image_or_list_of_images]
        props = self._arrays_with_modality(images, props if isinstance(props, list) else [props])
        return super().get_data_iterator_from_raw_npy_data(
            image_or_list_of_images, segs_from_prev_stage_or_list_of_segs_from_prev_stage, props, truncated_ofname,
            num_processes)

    def predict_from_list_of_npy_arrays(self, image_or_list_of_images: Union[np.ndarray, List[np.ndarray]],
                                        segs_from_prev_stage_or_list_of_segs_from_prev_stage: Union[
                                            None, np.ndarray, List[np.ndarray]],
                                        properties_or_list_of_properties: Union[dict, List[dict]],
                                        truncated_ofname: Union[str, List[str], None],
                                        num_processes: int = 3, save_probabilities: bool = False,
                                        num_processes_segmentation_export: int = default_num_processes):
        """nnU-Net's, with the outputs staged (see `_staged_outputs`)."""
        with self._staged_outputs() as staging:
            if truncated_ofname is not None:
                names = [truncated_ofname] if isinstance(truncated_ofname, str) else truncated_ofname
                truncated_ofname = [staging.stage(n) for n in names]
            return super().predict_from_list_of_npy_arrays(
                image_or_list_of_images, segs_from_prev_stage_or_list_of_segs_from_prev_stage,
                properties_or_list_of_properties, truncated_ofname, num_processes, save_probabilities,
                num_processes_segmentation_export)

    def predict_single_npy_array(self, input_image: np.ndarray, image_properties: dict,
                                 segmentation_previous_stage: np.ndarray = None, output_file_truncated: str = None,
                                 save_or_return_probabilities: bool = False):
        """nnU-Net's, for an image of modality image_properties["modality"], else `modality_override`; the outputs
        staged (see `_staged_outputs`)."""
        [properties] = self._arrays_with_modality([input_image], [image_properties])
        with self._cases_from_preprocessing(), self._staged_outputs() as staging:
            if output_file_truncated is not None:
                output_file_truncated = staging.stage(output_file_truncated)
            return super().predict_single_npy_array(input_image, properties, segmentation_previous_stage,
                                                    output_file_truncated, save_or_return_probabilities)


def check_model_folder(model_folder: str, use_folds, checkpoint_name: str) -> List[Union[int, str]]:
    """The folds to use (auto-detected when None, as nnU-Net does); clear errors when the model folder, its
    dataset.json/plans.json or a fold's checkpoint is missing."""
    if not isdir(model_folder):
        raise FileNotFoundError(f"model folder {model_folder} does not exist: train the model first (nnUNetv2_train) "
                                f"or check -d/-tr/-p/-c (or the model folder path)")
    for f in ("dataset.json", "plans.json"):
        if not isfile(join(model_folder, f)):
            raise FileNotFoundError(f"{join(model_folder, f)} is missing: {model_folder} is not a complete trained "
                                    f"nnU-Net model folder")
    available = [d[len('fold_'):] for d in subdirs(model_folder, prefix='fold_', join=False)
                 if isfile(join(model_folder, d, checkpoint_name))]
    if use_folds is None:
        folds = [int(f) for f in available if f != 'all']
    else:
        folds = [use_folds] if isinstance(use_folds, (str, int)) else list(use_folds)
        folds = [f if f == 'all' else int(f) for f in folds]
    missing = [f for f in folds if not isfile(join(model_folder, f'fold_{f}', checkpoint_name))]
    if missing or not folds:
        raise FileNotFoundError(
            f"{model_folder} has no {checkpoint_name} for fold(s) {missing if folds else '(none found)'}; folds with "
            f"that checkpoint: {sorted(available) or 'none'}. Choose folds with -f (e.g. -f "
            f"{' '.join(available[:1]) or 0}) or the checkpoint with -chk")
    return folds
