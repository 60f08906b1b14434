"""Inference per modality: nnU-Net's predictor, told each case's modality.

    nnUNetv2_predict_cin -i INPUT -o OUTPUT -d DATASET -c 3d_fullres [-f 0 1 ...] [-m CT] [every nnUNetv2_predict flag]
    nnUNetv2_predict_cin_from_modelfolder -i INPUT -o OUTPUT -m MODEL_FOLDER [--modality CT] [...]

How a case's modality reaches the network:
1. `nnUNetPredictorCIN.decide_modalities` resolves every input case BEFORE anything is written: `-m NAME`
   (`predictor.modality`) for all cases, else the rules of the model's dataset.json (nnunet_cin.modalities). An
   unresolvable case, or a modality the model was not trained on, is a ModalityError listing the cases and the
   valid names. Then every case's image is checked for Hounsfield units and compared with the modality
   signatures of the model's plans (nnunet_cin.inference.modality_check): a case that clearly looks like another
   modality than it was given, or is not in HU for a modality that needs HU, stops the run
   (`--skip-modality-check`, `predictor.check_modalities = False`: no check); `-m auto` gives each case the
   modality it looks like. The decisions are printed and recorded in the output folder's modalities.json.
2. Preprocessing: the plans' preprocessor (CINPreprocessor for nnUNetPlansCIN: the modality's normalization) runs
   inside nnU-Net's own data iterators; `ModalityConfigurationManager.preprocessor_class` hands them a
   `ModalityPreprocessor` (nnunet_cin.inference.preprocessing) that knows the resolved modality of each case and
   stores it in the case properties (properties["modality"], properties["modality_index"]).
3. Prediction: every case's sliding-window prediction (all patches, all mirrored copies, every fold of an ensemble)
   runs inside `nnunet_cin.condition(network, index)` with the modality of the properties of that case (nnU-Net's
   sequential loop, which predicts without the properties: the modality of the case its preprocessor has just
   prepared). Plain networks (Joint / single-modality baselines) are not conditioned, but still get per-modality
   preprocessing.
Around it: the inputs and the output are checked before the model is loaded (nnunet_cin.inference.checks), outputs
are written complete or not at all and --continue_prediction re-predicts incomplete ones (nnunet_cin.inference.outputs),
and SIGTERM ends the run with its workers; SIGKILL too (the workers end with their parent:
nnunet_cin.inference.orphans).
The predictor keeps the signatures of nnU-Net's nnUNetPredictor (nnU-Net records predict_from_files' arguments by
inspecting its signature) and wraps nnU-Net's own bodies. Everything else (sliding window, Gaussian weighting,
mirroring, fold ensembling, resampling, export, --save_probabilities, -num_parts/-part_id) is nnU-Net's: the outputs
are nnU-Net's, so nnUNetv2_ensemble and nnUNetv2_apply_postprocessing work on them as usual.
"""
import argparse
import multiprocessing
import os
import signal
import sys
import threading
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
from nnunet_cin.inference.hounsfield import hu_modalities
from nnunet_cin.inference.orphans import forked_children_end_with_this_process
from nnunet_cin.inference.modality_check import (AUTO, BY_FLAG, BY_RULES, CaseModality, ModalityCheck,
                                                 array_features, features_of_cases, record_decisions,
                                                 table, unclear)
from nnunet_cin.inference.outputs import OutputPlansManager, StagingFolders, why_unfinished
from nnunet_cin.inference.preprocessing import ModalityConfigurationManager
from nnunet_cin.plans import CINPlans
from nnunet_cin.modalities import MODALITY_KEYS, ModalityError, ModalityRules, case_id_from_image_file


# ---------------------------------------------------------------------------------------------------------------------
# the predictor


class nnUNetPredictorCIN(nnUNetPredictor):
    """nnU-Net's predictor for models of nnunet-cin: every case is preprocessed with its modality's normalization and
    (for conditional networks) predicted with the network conditioned on its modality. Every method keeps nnU-Net's
    signature; the overrides add the modality around nnU-Net's own bodies.

    `modality` (state, default None): the modality of every case this predictor is given (nnUNetv2_predict_cin -m
    NAME). None: each input file's case from the model's dataset.json rules; each array's from its
    properties["modality"].
    After `initialize_from_trained_model_folder`: `modalities` (the model's, in conditioning order, from its
    checkpoints), `rules` (the model's dataset.json rules) and `conditioned` (whether the network has CIN layers).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.modality: Optional[str] = None
        self.check_modalities = True
        self.modality_flag = "-m"  # how messages name the modality given (the from_modelfolder command: --modality)
        self.modalities: Optional[List[str]] = None
        self.rules: Optional[ModalityRules] = None
        self.conditioned = False
        self.current_modality: Optional[str] = None  # modality of the case being predicted
        self._staging: Optional[StagingFolders] = None  # where the current run writes unfinished outputs
        self._run_decisions: Dict[str, CaseModality] = {}  # of the current run: recorded in modalities.json
        self._told = set()  # messages printed (see `_tell`)

    # ------------------------------------------------------------------------------------------------ model loading
    def initialize_from_trained_model_folder(self, model_training_output_dir: str,
                                             use_folds: Union[Tuple[Union[int, str]], None],
                                             checkpoint_name: str = 'checkpoint_final.pth'):
        """nnU-Net's, plus: clear errors for a missing model folder or fold, and the model's modalities (recorded in
        every fold's checkpoint as checkpoint["modalities"]; all folds must agree)."""
        folds = check_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        super().initialize_from_trained_model_folder(model_training_output_dir, folds, checkpoint_name)
        recorded = []
        for f in folds:
            ckpt = torch.load(join(model_training_output_dir, f'fold_{f}', checkpoint_name), map_location='cpu',
                              weights_only=False, mmap=True)
            recorded.append(ckpt.get("modalities"))
        if any(r != recorded[0] for r in recorded):
            raise ModalityError(f"the folds {list(folds)} of {model_training_output_dir} were trained for different "
                                f"modalities: {recorded}")
        modalities = recorded[0] or CINPlans(self.plans_manager.plans).modalities
        self.set_modalities(modalities, source=join(model_training_output_dir, 'dataset.json'))

    def set_modalities(self, modalities: Optional[Sequence[str]], source: Optional[str] = None):
        """The model's modalities (conditioning order) and the dataset.json rules for new cases, and the managers
        through which nnU-Net's workers preprocess per modality and write complete outputs. Called by
        `initialize_from_trained_model_folder`; call it after nnU-Net's `manual_initialization`."""
        if not modalities:
            raise ModalityError(f"the model ({self.trainer_name}) records no modalities (no checkpoint['modalities'], "
                                f"no plans['cin']['modalities']): it was not trained by an nnunet-cin trainer; use "
                                f"nnUNetv2_predict for plain nnU-Net models")
        self.modalities = list(modalities)
        self.rules = ModalityRules.from_dataset_json(self.dataset_json, source=source)
        layers = cin_layers(self.network)
        self.conditioned = bool(layers)
        if layers and layers[0].num_modalities != len(self.modalities):
            raise ModalityError(f"the network has {layers[0].num_modalities} modality rows per CIN layer but the "
                                f"checkpoint records {len(self.modalities)} modalities {self.modalities}")
        self.configuration_manager = ModalityConfigurationManager(
            self.configuration_manager.configuration, CINPlans(self.plans_manager.plans).per_modality_normalization,
            self.modalities)
        self.plans_manager = OutputPlansManager(self.plans_manager.plans, self.dataset_json['file_ending'])

    # ----------------------------------------------------------------------------------------------------- modality
    def _check_name(self, modality: str) -> str:
        if modality not in self.modalities:
            if modality == AUTO:
                raise ModalityError('"auto" is for all cases of a run (predictor.modality, -m): give the modality of '
                                    'one image by its name')
            raise ModalityError(f'unknown modality "{modality}": this model was trained on {self.modalities}; use '
                                f'one of these names (or "{AUTO}" for all cases of a run: each recognised)')
        return modality

    def modalities_of_cases(self, list_of_lists: List[List[str]]) -> Dict[str, str]:
        """{case id: modality name} of every input case (its image files: one list per case), resolved and checked
        before anything is written; see `decide_modalities`."""
        return {case: d.modality for case, d in self.decide_modalities(list_of_lists).items()}

    def decide_modalities(self, list_of_lists: List[List[str]]) -> Dict[str, CaseModality]:
        """{case id: CaseModality} of every input case: `self.modality` for every case, else the model's dataset.json
        rules; `self.modality = "auto"`: each case as the modality its image looks like. Then (unless
        `self.check_modalities` is False) every case's image is compared with the modality signatures of the model's
        plans (nnunet_cin.inference.modality_check). One ModalityError lists every case that cannot be resolved, whose
        modality the model was not trained on, or that clearly looks like another modality than it was given. The one
        place where a prediction run's cases get their modality; prints the decision of every case."""
        if self.modalities is None:
            raise RuntimeError("initialize the predictor first (initialize_from_trained_model_folder)")
        auto = self.modality == AUTO
        if self.modality is not None and not auto:
            self._check_name(self.modality)
        file_ending = self.dataset_json['file_ending']
        cases = {case_id_from_image_file(files[0], file_ending): files for files in list_of_lists}
        check = self._modality_check()
        if auto and not check.usable:
            raise ModalityError(f"{self.modality_flag} auto cannot recognise the cases: {check.why_unusable}. Pass "
                                f"{self.modality_flag} NAME, or name the files after the model's rules")
        given = {} if auto else self._given_modalities(list(cases))
        if not (auto or self.check_modalities):
            decisions = given
            self._tell("The modality check is off (--skip-modality-check / predictor.check_modalities = False): no "
                       "case is compared with the modality signatures of the model's plans.", warning=True)
        elif not check.usable and not any(check.checks(d.modality) for d in given.values()):
            decisions = given
            self._tell(f"The modality check is skipped: {check.why_unusable}.", warning=True)
        else:
            if not check.usable:
                self._tell(f"The signature part of the modality check is skipped: {check.why_unusable}. Only the "
                           f"Hounsfield-unit check runs (for {check.hu_modalities}).", warning=True)
            elif check.unsigned:
                self._tell(f"The model's plans hold no signature for {check.unsigned}: cases of "
                           f"{'these modalities' if len(check.unsigned) > 1 else 'this modality'} are not checked"
                           f"{' and cannot be recognised' if auto else ''}.", warning=True)
            to_check = cases if auto else {c: f for c, f in cases.items() if check.checks(given[c].modality)}
            features = features_of_cases(to_check, self.plans_manager.image_reader_writer_class)
            decisions = (check.recognise(list(cases), features, self.modality_flag) if auto
                         else check.check_given(given, features, self.modality_flag))
        self._tell("Modality of each case (case, modality, decided by, modality check):\n" +
                   "\n".join(table(decisions)))
        doubtful = unclear(decisions)
        if doubtful:
            self._tell(f"{len(doubtful)} case(s) match no modality clearly and are predicted as given; check that "
                       f"they are of the modality given:\n" +
                       "\n".join(f"  - {c}: given {d.modality}, {d.describe()}" for c, d in doubtful.items()),
                       warning=True)
        return decisions

    def _modality_check(self) -> ModalityCheck:
        """The check of this model: its plans' signatures, and which of its modalities need Hounsfield units."""
        plans = self.plans_manager.plans
        return ModalityCheck(CINPlans(plans).signatures, self.modalities, hu_modalities(plans))

    def _given_modalities(self, case_ids: List[str]) -> Dict[str, CaseModality]:
        """Each case's modality by `self.modality` or the model's rules; errors for unresolvable cases and modalities
        the model was not trained on; warnings when -m overrides the rules, or the rules are not the plans'."""
        hint = (f"\nThis model's modalities: {self.modalities}. Pass {self.modality_flag} NAME (Python: "
                f"predictor.modality = NAME) to set the modality of every input case, or {self.modality_flag} auto "
                f"to have each recognised.")
        try:
            resolved = self.rules.resolve(case_ids, self.modality)
        except ModalityError as e:
            raise ModalityError(f"{e}{hint}") from None
        untrained = {c: m for c, m in resolved.items() if m not in self.modalities}
        if untrained:
            raise ModalityError(f"{len(untrained)} case(s) are of a modality this model was not trained on: "
                                + ", ".join(f'"{c}" ({m})' for c, m in untrained.items()) + hint)
        if self.modality is None:
            self._tell_rules_drift()
            return {c: CaseModality(m, BY_RULES) for c, m in resolved.items()}
        overridden = {}
        for c in case_ids:
            try:
                by_rules = self.rules.modality_of(c)
            except ModalityError:
                continue  # the rules say nothing about this case
            if by_rules != self.modality:
                overridden[c] = by_rules
        if overridden:
            self._tell(f"{self.modality_flag} {self.modality} contradicts the model's dataset.json rules for "
                       f"{len(overridden)} case(s), predicted as {self.modality} nonetheless: "
                       + ", ".join(f"{c} (rules: {m})" for c, m in overridden.items()), warning=True)
        return {c: CaseModality(m, BY_FLAG) for c, m in resolved.items()}

    def _tell_rules_drift(self):
        """The rules of the model's dataset.json decide the modality of new cases; say so when they are not the rules
        its plans (and so its training data) were made with."""
        planned = CINPlans(self.plans_manager.plans).rules
        current = self.rules.to_dict()
        if planned is None or planned == current:
            return
        changed = [k for k in MODALITY_KEYS if planned.get(k) != current.get(k)]
        self._tell(
            f"The modality rules of the model's dataset.json ({self.rules.source}) differ from the ones its plans were "
            f"made with: " + "; ".join(f'"{k}" {current.get(k)} (plans: {planned.get(k)})' for k in changed) +
            ". New cases get their modality from the dataset.json rules (the model's current rules, the ones "
            "nnU-Net copied into the model folder and users edit for new file names); the training data was "
            "preprocessed with the plans' rules. If the change is a mistake, restore the plans' rules in that "
            "dataset.json, or give the modality with -m.", warning=True)

    def _tell(self, message: str, warning: bool = False):
        """Print a message once per predictor (the command resolves the cases before and again inside nnU-Net's
        run)."""
        if message in self._told:
            return
        self._told.add(message)
        print(("WARNING: " if warning else "") + message, file=sys.stderr if warning else sys.stdout, flush=True)

    def _modalities_of_arrays(self, images: List[np.ndarray], properties: List[dict]) -> List[dict]:
        """Copies of input arrays' properties naming their modality: properties["modality"], else self.modality
        ("auto": recognised), each array checked against the modality signatures as files are (see
        `decide_modalities`)."""
        forced = self.modality
        given, unnamed = {}, []
        for i, p in enumerate(properties):
            modality = p.get("modality")
            if modality is not None and forced not in (None, AUTO) and modality != forced:
                raise ModalityError(f'image {i}: properties["modality"] is "{modality}" but predictor.modality is '
                                    f'"{forced}"; set one of them')
            if modality is None and forced is None:
                raise ModalityError(f'image {i} has no modality: set predictor.modality = NAME (or "auto") or its '
                                    f'properties["modality"] (one of {self.modalities})')
            if modality is None and forced == AUTO:
                unnamed.append(f"image {i}")
            else:
                given[f"image {i}"] = CaseModality(self._check_name(modality or forced), BY_FLAG)
        check = self._modality_check()
        if unnamed and not check.usable:
            raise ModalityError(f'predictor.modality = "auto" cannot recognise the images: {check.why_unusable}')
        if (check.usable or check.hu_modalities) and (self.check_modalities or unnamed):
            features = {f"image {i}": array_features(image, p) for i, (image, p) in enumerate(zip(images, properties))}
            checked = {c: d for c, d in given.items() if check.checks(d.modality)}
            if self.check_modalities and checked:
                check.check_given(checked, features, "predictor.modality")
            given.update(check.recognise(unnamed, features, "predictor.modality") if unnamed else {})
        return [dict(p, modality=given[f"image {i}"].modality) for i, p in enumerate(properties)]

    @contextmanager
    def _prediction_run(self, list_of_lists_or_source_folder: Union[str, List[List[str]]],
                        output_folder_or_list_of_truncated_output_files: Union[str, None, List[str]],
                        part_id: int = 0, num_parts: int = 1):
        """One run of nnU-Net's predict_from_files(_sequential): inputs and outputs are checked and every case's
        modality is resolved first (errors before anything is written), then handed to the run's preprocessing;
        outputs are staged."""
        lists = check_prediction_inputs_and_outputs(list_of_lists_or_source_folder,
                                                    output_folder_or_list_of_truncated_output_files, self.dataset_json)
        check_input_dimensions(lists, len(self.configuration_manager.patch_size))
        self._run_decisions = self.decide_modalities(lists[part_id::num_parts])
        previous = self.configuration_manager.case_modalities
        self.configuration_manager.case_modalities = {c: d.modality for c, d in self._run_decisions.items()}
        try:
            with self._staged_outputs():
                yield
        finally:
            self.configuration_manager.case_modalities = previous
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

    @contextmanager
    def conditioned_on(self, modality: Optional[str]):
        """Predictions inside this block are for a case of `modality` (None: no case)."""
        previous = self.current_modality
        self.current_modality = None if modality is None else self._check_name(modality)
        try:
            yield
        finally:
            self.current_modality = previous

    def _follow_preprocessing(self, modality: str):
        self.current_modality = self._check_name(modality)

    @contextmanager
    def _conditioned_by_preprocessing(self):
        """nnU-Net's sequential loop preprocesses a case in this process, then predicts it without its properties:
        condition on the modality of the case the preprocessor has just prepared."""
        previous = self.current_modality
        self.configuration_manager.on_case_preprocessed = self._follow_preprocessing
        try:
            yield
        finally:
            self.configuration_manager.on_case_preprocessed = None
            self.current_modality = previous

    # -------------------------------------------------------------------------------------------------- prediction
    @torch.inference_mode()
    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> Union[np.ndarray, torch.Tensor]:
        """nnU-Net's sliding window (all patches, mirrored copies), inside condition(network, case modality)."""
        if not self.conditioned:
            return super().predict_sliding_window_return_logits(input_image)
        if self.current_modality is None:
            raise RuntimeError("the modality of this case is unknown: predict through predict_from_files / "
                               "predict_single_npy_array (with predictor.modality or properties['modality']), or "
                               "inside `with predictor.conditioned_on(NAME):`")
        with condition(self.network, self.modalities.index(self.current_modality)):
            return super().predict_sliding_window_return_logits(input_image)

    def _cases_conditioned(self, data_iterator):
        """nnU-Net's predict_from_data_iterator takes a case from the iterator, then predicts it: condition on the
        modality in the properties of the case taken last."""
        for item in data_iterator:
            modality = item['data_properties'].get('modality')
            if modality is None:
                raise ModalityError("a preprocessed case carries no properties['modality']; preprocess with "
                                    "nnunet_cin's preprocessor (predict_from_files / get_data_iterator_*)")
            self.current_modality = self._check_name(modality)
            yield item

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = default_num_processes):
        previous = self.current_modality
        try:
            return super().predict_from_data_iterator(self._cases_conditioned(data_iterator), save_probabilities,
                                                      num_processes_segmentation_export)
        finally:
            self.current_modality = previous
            if isinstance(data_iterator, MultiThreadedAugmenter):  # nnU-Net finishes it only when it sees it
                data_iterator._finish()

    def predict_from_files(self, list_of_lists_or_source_folder: Union[str, List[List[str]]],
                           output_folder_or_list_of_truncated_output_files: Union[str, None, List[str]],
                           save_probabilities: bool = False, overwrite: bool = True,
                           num_processes_preprocessing: int = default_num_processes,
                           num_processes_segmentation_export: int = default_num_processes,
                           folder_with_segs_from_prev_stage: str = None, num_parts: int = 1, part_id: int = 0):
        """nnU-Net's, with the inputs and outputs checked (nnunet_cin.inference.checks) and every case's modality
        resolved before anything is written (`self.modality` or the model's rules), then handed to nnU-Net's
        preprocessing workers, which start on the first case."""
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
                self._conditioned_by_preprocessing():
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
            save_json({**load_json(args_file), "modality": self.modality, "check_modalities": self.check_modalities},
                      args_file)
        return folder

    def _record_modality(self, folder: Optional[str], kept: Sequence[str]):
        """modalities.json: this run's decision for every case it predicts; the earlier record stays for the outputs
        --continue_prediction keeps (`kept`: their case ids), and a kept output this run would predict as another
        modality is reported."""
        if folder is None or not self._run_decisions:
            return
        conflicts = record_decisions(folder, self._run_decisions, kept=kept)
        if conflicts:
            self._tell(f"{len(conflicts)} output(s) kept by --continue_prediction were predicted as another modality "
                       f"than this run gives them; they are not predicted again (modalities.json keeps what they were "
                       f"predicted with). Delete them, or predict into a new folder, to predict them as given:\n" +
                       "\n".join(f"  - {c}: predicted as {was}, this run: {now}" for c, was, now in conflicts),
                       warning=True)

    def get_data_iterator_from_raw_npy_data(self, image_or_list_of_images: Union[np.ndarray, List[np.ndarray]],
                                            segs_from_prev_stage_or_list_of_segs_from_prev_stage: Union[
                                                None, np.ndarray, List[np.ndarray]],
                                            properties_or_list_of_properties: Union[dict, List[dict]],
                                            truncated_ofname: Union[str, List[str], None],
                                            num_processes: int = 3):
        """nnU-Net's; each image's modality: its properties["modality"], else `self.modality`."""
        props = properties_or_list_of_properties
        images = image_or_list_of_images if isinstance(image_or_list_of_images, list) else [image_or_list_of_images]
        props = self._modalities_of_arrays(images, props if isinstance(props, list) else [props])
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
        """nnU-Net's, for an image of modality image_properties["modality"], else `self.modality`; the outputs
        staged (see `_staged_outputs`)."""
        [properties] = self._modalities_of_arrays([input_image], [image_properties])
        with self.conditioned_on(properties["modality"]), self._staged_outputs() as staging:
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


# ---------------------------------------------------------------------------------------------------------------------
# commands


def _add_common_arguments(parser: argparse.ArgumentParser, default_npp: int, default_nps: int):
    parser.add_argument('-i', type=str, required=True,
                        help='input folder (nnU-Net naming: CASE_0000.nii.gz ...; file ending as in training)')
    parser.add_argument('-o', type=str, required=True,
                        help='output folder; created if missing. Predictions are named like their cases')
    parser.add_argument('-f', nargs='+', type=str, required=False, default=(0, 1, 2, 3, 4),
                        help='folds of the trained model to use (several: their predictions are averaged). '
                             'Default: 0 1 2 3 4')
    parser.add_argument('-step_size', type=float, required=False, default=0.5,
                        help='sliding window step size (fraction of the patch size). Default: 0.5')
    parser.add_argument('--disable_tta', action='store_true', required=False, default=False,
                        help='disable test time augmentation (mirroring). Faster, less accurate')
    parser.add_argument('--verbose', action='store_true', help='talk a lot')
    parser.add_argument('--save_probabilities', action='store_true',
                        help='also export class probabilities (.npz/.pkl), needed by nnUNetv2_ensemble')
    parser.add_argument('--continue_prediction', '--c', action='store_true',
                        help='continue an aborted prediction (existing outputs are not predicted again)')
    parser.add_argument('-chk', type=str, required=False, default='checkpoint_final.pth',
                        help='checkpoint to use. Default: checkpoint_final.pth')
    parser.add_argument('-npp', type=int, required=False, default=default_npp,
                        help=f'processes for preprocessing. Default: {default_npp} (-npp 0 -nps 0: no '
                             f'multiprocessing at all)')
    parser.add_argument('-nps', type=int, required=False, default=default_nps,
                        help=f'processes for segmentation export. Default: {default_nps}')
    parser.add_argument('-prev_stage_predictions', type=str, required=False, default=None,
                        help='folder with the predictions of the previous stage (cascade)')
    parser.add_argument('-device', type=str, default='cuda', required=False,
                        help="'cuda' (GPU), 'cpu' or 'mps'. Select the GPU with CUDA_VISIBLE_DEVICES. Default: cuda")
    parser.add_argument('--disable_progress_bar', action='store_true', required=False, default=False,
                        help='no progress bar (non-interactive jobs)')
    parser.add_argument('--not_on_device', action='store_true', required=False, default=False,
                        help='keep the result arrays off the GPU (very large cases)')


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name) or default)
    except ValueError:
        return default


def _device(name: str) -> torch.device:
    if name not in ('cpu', 'cuda', 'mps'):
        raise ValueError(f"-device must be cpu, cuda or mps, got {name!r}")
    if name == 'cpu':
        torch.set_num_threads(multiprocessing.cpu_count())  # as nnU-Net
        return torch.device('cpu')
    if name == 'cuda':
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        return torch.device('cuda')
    return torch.device('mps')


_sigterm_received = False  # a SIGTERM is ending the current run
_forking = False  # inside os.fork's hooks (below)
_sigterm_while_forking = False


def _exit_on_sigterm(signum, frame):
    global _sigterm_received, _sigterm_while_forking
    if _forking:
        # inside os.fork's hooks, where Python prints an exception and drops it (the run would go on): handled again
        # once the fork is done (_unblock_sigterm)
        _sigterm_while_forking = True
        return
    if _sigterm_received:  # repeated: a second SystemExit would interrupt the unwinding (its cleanup) halfway
        return
    _sigterm_received = True
    # multiprocessing's resource-sharer thread hands file descriptors (shared tensors) to the export workers; one that
    # Pool.terminate ends mid-handshake makes it print a ConnectionResetError traceback, which Python hides only once
    # the interpreter is exiting (multiprocessing.util.is_exiting). The unwinding is the exit: hide it from now on.
    if not isinstance(sys.excepthook, _QuietResourceSharer):
        sys.excepthook = _QuietResourceSharer(sys.excepthook)
    # nnU-Net's daemonic preprocessing workers first: left for Python's exit, they would print a traceback each when
    # the Manager that holds their queues shuts down during the unwinding. Not the export pool's workers: an idle one
    # waits for work holding the pool's queue lock, and killed with it, Pool.terminate (the unwinding's) would wait
    # for that lock forever; Pool.terminate ends them itself.
    for child in multiprocessing.active_children():
        if child.daemon and "PoolWorker" not in child.name:
            child.terminate()
    raise SystemExit(128 + signum)


class _QuietResourceSharer:
    """sys.excepthook that drops the connection errors of multiprocessing's resource-sharer thread (a peer that
    vanished while it was handed a file descriptor) and passes everything else on."""

    def __init__(self, hook):
        self.hook = hook

    def __call__(self, exc_type, exc, tb):
        in_sharer = tb is not None and tb.tb_frame.f_globals.get("__name__") == "multiprocessing.resource_sharer"
        if not (in_sharer and issubclass(exc_type, (ConnectionError, EOFError))):
            self.hook(exc_type, exc, tb)


# Forked children (nnU-Net's file-listing pool, its Manager) must keep SIGTERM's default: multiprocessing ends them with
# SIGTERM and waits. A Python handler in them would lose a SIGTERM that arrives before the child has set up (Python
# drops signals pending at fork), and Pool.terminate would wait forever: SIGTERM stays blocked across the fork, and
# the child unblocks it only after restoring the default.
def _block_sigterm():
    global _forking
    if signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
        _forking = True
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _unblock_sigterm():
    global _forking, _sigterm_while_forking
    if signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if _sigterm_while_forking:
            _sigterm_while_forking = False
            # again, a moment later, once the main thread has left the fork's hooks: a real signal to the main thread
            # (interrupt_main only sets Python's flag, which waits until a blocking call there returns, e.g. a 60 s
            # sleep; a signal interrupts it)
            threading.Timer(0.01, signal.pthread_kill, (threading.main_thread().ident, signal.SIGTERM)).start()
        # last (no point where a handler runs comes after it here), and this hook is the last one: registered when
        # the first run starts, after the imported modules have registered theirs
        _forking = False


def _default_sigterm_in_child():
    global _forking
    handler = signal.getsignal(signal.SIGTERM)
    # also after the run's SIGTERM, when the parent ignores further ones: a child forked then must still end on the
    # SIGTERM its Pool's cleanup sends it
    if handler is _exit_on_sigterm or (_sigterm_received and handler == signal.SIG_IGN):
        _forking = False
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


_fork_hooks_registered = False


@contextmanager
def _sigterm_ends_run():
    """SIGTERM (kill, timeout, a job scheduler) would end this process alone, and nnU-Net's preprocessing and export
    workers would live on. Here it ends them, then unwinds like Ctrl-C (SystemExit): nnU-Net's export pool and
    Manager are shut down and unfinished outputs removed."""
    global _fork_hooks_registered
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return
    if not _fork_hooks_registered:
        os.register_at_fork(before=_block_sigterm, after_in_parent=_unblock_sigterm,
                            after_in_child=_default_sigterm_in_child)
        _fork_hooks_registered = True
    global _sigterm_received
    _sigterm_received = False
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        # after a SIGTERM the process is on its way out: a repeated one would end it before Python's exit has shut
        # down the Manager and the workers (and as killed by a signal, not with 128 + SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_IGN if _sigterm_received else previous)


def _add_modality_check_arguments(parser: argparse.ArgumentParser):
    parser.add_argument('--skip-modality-check', action='store_true',
                        help="do not check the input images (by default a case whose image clearly looks like "
                             "another modality than it was given, by the modality signatures of the model's plans, or "
                             "that is not in Hounsfield units for a modality that needs them, stops the run before "
                             "anything is written). -m auto still decides by the check")


def _run(parser: argparse.ArgumentParser, args, model_folder: str, modality: Optional[str], num_parts: int = 1,
         part_id: int = 0, modality_flag: str = '-m'):
    """Load the model, resolve every case's modality, and only then create the output folder and predict."""
    if not 0 <= part_id < num_parts:
        parser.error(f"-part_id must be in 0..{num_parts - 1} (-num_parts {num_parts}), got {part_id}")
    try:
        device = _device(args.device)
        folds = [f if f == 'all' else int(f) for f in args.f]
        # before the model is loaded, and writing nothing: the model folder, the inputs and the output
        check_model_folder(model_folder, folds, args.chk)
        dataset_json_file = join(model_folder, 'dataset.json')
        lists = check_prediction_inputs_and_outputs(args.i, args.o, load_json(dataset_json_file), dataset_json_file)
        predictor = nnUNetPredictorCIN(tile_step_size=args.step_size, use_gaussian=True,
                                       use_mirroring=not args.disable_tta,
                                       perform_everything_on_device=not args.not_on_device, device=device,
                                       verbose=args.verbose, verbose_preprocessing=args.verbose,
                                       allow_tqdm=not args.disable_progress_bar)
        predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint_name=args.chk)
        check_input_dimensions(lists, len(predictor.configuration_manager.patch_size), model_folder)
        predictor.modality = modality
        predictor.modality_flag = modality_flag
        predictor.check_modalities = not args.skip_modality_check
        if args.skip_modality_check and modality == AUTO:
            print(f"WARNING: {modality_flag} auto recognises each case by the modality check, so "
                  f"--skip-modality-check cannot turn it off: the signatures and the Hounsfield-unit check still "
                  f"decide each case's modality (give {modality_flag} NAME to predict without the check)",
                  file=sys.stderr, flush=True)
        # resolve and check now: an error stops the run before the output folder or any file is created
        predictor.modalities_of_cases(lists[part_id::num_parts])
    except (ModalityError, FileNotFoundError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except RuntimeError as e:
        if "Could not find requested nnunet trainer" not in str(e):
            raise
        parser.exit(2, f"{parser.prog}: error: {e}\nnnunet-cin's trainers: run `eval \"$(nnunet-cin env)\"` to set "
                       f"nnUNet_extTrainer\n")
    os.makedirs(args.o, exist_ok=True)
    if args.nps == 0 and args.npp == 0:
        print("Running in non-multiprocessing mode")
        # nnU-Net's sequential prediction has no parts: give it this part's cases
        predictor.predict_from_files_sequential(args.i if num_parts == 1 else lists[part_id::num_parts], args.o,
                                                save_probabilities=args.save_probabilities,
                                                overwrite=not args.continue_prediction,
                                                folder_with_segs_from_prev_stage=args.prev_stage_predictions)
    else:
        predictor.predict_from_files(args.i, args.o, save_probabilities=args.save_probabilities,
                                     overwrite=not args.continue_prediction,
                                     num_processes_preprocessing=max(1, args.npp),
                                     num_processes_segmentation_export=max(1, args.nps),
                                     folder_with_segs_from_prev_stage=args.prev_stage_predictions,
                                     num_parts=num_parts, part_id=part_id)
    return predictor


def predict_entry_point(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_predict_cin",
        description="nnUNetv2_predict for nnunet-cin models: every case is preprocessed with its modality's "
                    "normalization and predicted by the network conditioned on its modality. Without -m, each "
                    "case's modality comes from the rules of the model's dataset.json.")
    parser.add_argument('-d', type=str, required=True, help='dataset name or id')
    parser.add_argument('-p', type=str, required=False, default='nnUNetPlansCIN',
                        help='plans identifier. Default: nnUNetPlansCIN')
    parser.add_argument('-tr', type=str, required=False, default='nnUNetTrainerCIN',
                        help='trainer class used for training. Default: nnUNetTrainerCIN')
    parser.add_argument('-c', type=str, required=True, help='configuration, e.g. 3d_fullres')
    parser.add_argument('-m', '--modality', type=str, default=None,
                        help="modality of ALL input cases (e.g. CT), or 'auto': each case as the modality its image "
                             "looks like (the modality signatures of the model's plans). Default: each case's "
                             "modality from the model's dataset.json rules")
    _add_modality_check_arguments(parser)
    _add_common_arguments(parser, _env_int('nnUNet_npp', 3), _env_int('nnUNet_nps', 3))
    parser.add_argument('-num_parts', type=int, required=False, default=1,
                        help='number of separate nnUNetv2_predict_cin calls sharing the inputs. Default: 1')
    parser.add_argument('-part_id', type=int, required=False, default=0,
                        help='which of the -num_parts calls this is (0 .. num_parts - 1). Default: 0')
    args = parser.parse_args(argv)
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    try:
        model_folder = get_output_folder(args.d, args.tr, args.p, args.c)
    except RuntimeError as e:  # unknown dataset, or nnUNet_results not set
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if not isdir(model_folder):
        parent = os.path.dirname(model_folder)
        trained = sorted(subdirs(parent, join=False)) if isdir(parent) else []
        parser.exit(2, f"{parser.prog}: error: no trained model at {model_folder} (-tr {args.tr} -p {args.p} -c "
                       f"{args.c}). Models of this dataset: {', '.join(trained) or 'none'} "
                       f"(TRAINER__PLANS__CONFIGURATION)\n")
    with _sigterm_ends_run(), forked_children_end_with_this_process():
        _run(parser, args, model_folder, args.modality, args.num_parts, args.part_id)


def predict_from_modelfolder_entry_point(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_predict_cin_from_modelfolder",
        description="nnUNetv2_predict_from_modelfolder for nnunet-cin models. As in nnU-Net, -m is the model folder; "
                    "the modality of all inputs is --modality.")
    parser.add_argument('-m', type=str, required=True,
                        help='trained model folder (with fold_X subfolders, dataset.json and plans.json)')
    parser.add_argument('--modality', type=str, default=None,
                        help="modality of ALL input cases (e.g. CT), or 'auto': each case as the modality its image "
                             "looks like (the modality signatures of the model's plans). Default: each case's "
                             "modality from the model's dataset.json rules")
    _add_modality_check_arguments(parser)
    _add_common_arguments(parser, 3, 3)
    args = parser.parse_args(argv)
    with _sigterm_ends_run(), forked_children_end_with_this_process():
        _run(parser, args, args.m, args.modality, modality_flag='--modality')


if __name__ == '__main__':
    predict_entry_point(sys.argv[1:])
