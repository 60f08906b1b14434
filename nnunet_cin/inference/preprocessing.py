"""The preprocessing side of prediction: nnU-Net's inference preprocessing, told each case's modality, writes it into
the case's properties (the one carrier from the run's decisions to the network; see nnunet_cin.inference.predictor).

nnU-Net's data iterators (predict_from_files, predict_from_list_of_npy_arrays, predict_single_npy_array) create the
preprocessor as `configuration_manager.preprocessor_class(verbose=...)`, in spawned worker processes, and call
`run_case` / `run_case_npy` without a modality. `ModalityConfigurationManager` (the predictor's configuration
manager) answers with a `ModalityPreprocessor`: the plans' preprocessor (CINPreprocessor for per-modality plans),
given the modality decided for each case of the run (`run_modalities`), which it also writes into the case
properties (properties["modality"], properties["modality_index"]).

Where nnU-Net preprocesses in the predictor's own process and hands the data, without its properties, straight to the
network (its sequential loop, predict_from_files_sequential / -npp 0 -nps 0, and predict_single_npy_array), the
preprocessor also hands the properties it has just written to the predictor: the one callback,
`ModalityConfigurationManager.on_case_preprocessed`.

This module is imported by every spawned preprocessing and export worker (they unpickle the configuration manager):
it stays light on purpose (no nnU-Net predictor, no torch._dynamo; CINPreprocessor imported where it is used).
"""
from typing import Callable, Dict, List, Optional, Sequence

from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_cin.inference.orphans import end_with_parent
from nnunet_cin.modalities import ModalityError, case_id_from_image_file

CIN_PREPROCESSOR = "CINPreprocessor"  # nnunet_cin.preprocessing.preprocessor.CINPreprocessor.__name__

end_with_parent()  # this module is imported by nnU-Net's spawned workers: they end with their parent


class ModalityPreprocessor:
    """The plans' preprocessor for one prediction run, with the decided modality of every input case.

    nnU-Net's data iterators create it through `configuration_manager.preprocessor_class(verbose=...)` (in their
    worker processes) and call `run_case` / `run_case_npy` without a modality: it adds the case's modality, passes it
    to CINPreprocessor (which normalizes with the modality's scheme and statistics), and records it in the case
    properties for any preprocessor, which is where the predictor reads it back."""

    def __init__(self, base_class: type, modalities: Sequence[str], run_modalities: Dict[str, str],
                 verbose: bool = False, on_case: Optional[Callable[[dict], None]] = None):
        from nnunet_cin.preprocessing.preprocessor import CINPreprocessor
        self.base = base_class(verbose=verbose)
        self.modalities = list(modalities)
        self.run_modalities = dict(run_modalities)
        self.takes_modality = issubclass(base_class, CINPreprocessor)
        self.on_case = on_case

    def modality_of_files(self, image_files: List[str], file_ending: str) -> str:
        case_id = case_id_from_image_file(image_files[0], file_ending)
        if case_id not in self.run_modalities:
            raise ModalityError(f'case "{case_id}" ({image_files[0]}) was not among the cases whose modality was '
                                f'decided for this prediction run')
        return self.run_modalities[case_id]

    def _tag(self, properties: dict, modality: str) -> dict:
        properties["modality"] = modality
        properties["modality_index"] = self.modalities.index(modality)
        if self.on_case is not None:
            self.on_case(properties)
        return properties

    def run_case(self, image_files, seg_file, plans_manager, configuration_manager, dataset_json):
        if isinstance(dataset_json, str):
            dataset_json = load_json(dataset_json)
        modality = self.modality_of_files(image_files, dataset_json["file_ending"])
        extra = {"modality": modality} if self.takes_modality else {}
        data, seg, properties = self.base.run_case(image_files, seg_file, plans_manager, configuration_manager,
                                                   dataset_json, **extra)
        return data, seg, self._tag(properties, modality)

    def run_case_npy(self, data, seg, properties, plans_manager, configuration_manager, dataset_json):
        modality = properties.get("modality")
        if modality not in self.modalities:
            raise ModalityError(f"image properties name modality {modality!r}; this model serves {self.modalities}")
        extra = {"modality": modality} if self.takes_modality else {}
        data, seg, properties = self.base.run_case_npy(data, seg, properties, plans_manager, configuration_manager,
                                                       dataset_json, **extra)
        return data, seg, self._tag(properties, modality)


class ModalityPreprocessorFactory:
    """What `ModalityConfigurationManager.preprocessor_class` returns: called like a preprocessor class. Picklable,
    so that nnU-Net's spawned preprocessing workers receive it with the configuration manager."""

    def __init__(self, base_class: type, modalities: Sequence[str], run_modalities: Dict[str, str],
                 on_case: Optional[Callable[[dict], None]] = None):
        self.base_class, self.modalities, self.run_modalities = base_class, list(modalities), dict(run_modalities)
        self.on_case = on_case

    def __call__(self, verbose: bool = False) -> ModalityPreprocessor:
        return ModalityPreprocessor(self.base_class, self.modalities, self.run_modalities, verbose, self.on_case)


class ModalityConfigurationManager(ConfigurationManager):
    """nnU-Net's ConfigurationManager whose `preprocessor_class` is our preprocessor for the current run.

    nnU-Net finds the preprocessor by name inside its own package, which cannot see CINPreprocessor: this is the one
    place where inference picks it (plans whose preprocessor_name is CINPreprocessor, or that carry per-modality
    normalization in plans["cin"]); other plans keep nnU-Net's preprocessor."""

    def __init__(self, configuration_dict: dict, per_modality_normalization: bool, modalities: Sequence[str]):
        super().__init__(configuration_dict)
        self.per_modality_normalization = per_modality_normalization
        self.modalities = list(modalities)
        self.run_modalities: Dict[str, str] = {}  # {case: modality} decided for the current prediction run
        # called with each case's properties by preprocessors created in this process (nnU-Net's sequential loop,
        # predict_single_npy_array): how the predictor learns the modality of the case it predicts next
        self.on_case_preprocessed: Optional[Callable[[dict], None]] = None

    def __getstate__(self):
        # nnU-Net's spawned workers receive a copy: they have no predictor to tell (and must not pickle one)
        return {**self.__dict__, "on_case_preprocessed": None}

    @property
    def base_preprocessor_class(self) -> type:
        if self.per_modality_normalization or self.preprocessor_name == CIN_PREPROCESSOR:
            from nnunet_cin.preprocessing.preprocessor import CINPreprocessor
            return CINPreprocessor
        cls = super().preprocessor_class
        if cls is None:
            raise RuntimeError(f"preprocessor {self.preprocessor_name!r} named by the plans was not found in nnU-Net")
        return cls

    @property
    def preprocessor_class(self) -> ModalityPreprocessorFactory:
        return ModalityPreprocessorFactory(self.base_preprocessor_class, self.modalities, self.run_modalities,
                                           self.on_case_preprocessed)
