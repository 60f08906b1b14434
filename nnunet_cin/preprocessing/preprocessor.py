"""CINPreprocessor: nnU-Net's DefaultPreprocessor, normalizing each case with its modality's scheme and statistics.

Everything else (transpose, crop, resample, foreground sampling, saving) is nnU-Net's. The modality's normalization
comes from plans["cin"] (written by nnunet_cin.planning.planners): for a case of modality m, nnU-Net's own `_normalize` runs
with normalization_schemes = [scheme of m] * channels, use_mask_for_norm = [mask of m] * channels and the
foreground intensity properties of m's cases. The case's modality name and conditioning index are stored in its
properties (properties["modality"], properties["modality_index"]), i.e. in the preprocessed .pkl files.

Training: the modality of a case comes from the dataset.json rules (nnunet_cin.modalities). Inference on new images:
the same class, with `modality=` given explicitly, or resolved from the case id of the image file names.
"""
import os
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join, load_json, load_pickle
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_cin.plans import CINPlans
from nnunet_cin.modalities import (ModalityError, ModalityRules, case_id_from_image_file,
                                   case_id_from_preprocessed_file)


def stored_modalities(data_folder: str) -> Dict[str, Tuple[Optional[str], Optional[int]]]:
    """{case: (modality, conditioning index)} as the preprocessing stored them in the properties (CASE.pkl) of the
    cases of a preprocessed data folder; (None, None) for cases preprocessed without one (plain nnU-Net)."""
    out = {}
    for name in sorted(os.listdir(data_folder)):
        if name.endswith(".pkl"):
            properties = load_pickle(join(data_folder, name))
            out[case_id_from_preprocessed_file(name)] = (properties.get("modality"), properties.get("modality_index"))
    return out


def modality_managers(plans_manager: PlansManager, configuration_manager: ConfigurationManager, modality: str,
                      num_channels: int) -> Tuple[PlansManager, ConfigurationManager]:
    """Copies of the managers whose channel-wise normalization entries are those of `modality`, so that nnU-Net's
    `_normalize` applies the modality's scheme with the modality's statistics."""
    scheme, use_mask, props = CINPlans(plans_manager.plans).normalization(modality, num_channels)
    pm = PlansManager({**plans_manager.plans, "foreground_intensity_properties_per_channel": props})
    cm = ConfigurationManager({**configuration_manager.configuration,
                               "normalization_schemes": [scheme] * num_channels,
                               "use_mask_for_norm": [use_mask] * num_channels})
    return pm, cm


class CINPreprocessor(DefaultPreprocessor):
    def __init__(self, verbose: bool = True):
        super().__init__(verbose)

    # ---------------------------------------------------------------------------------------------------- modality
    @staticmethod
    def modality_of_files(image_files: List[str], dataset_json: Union[dict, str]) -> str:
        """Modality of an input case from the case id of its image files and the dataset.json rules."""
        if isinstance(dataset_json, str):
            dataset_json = load_json(dataset_json)
        case_id = case_id_from_image_file(image_files[0], dataset_json["file_ending"])
        return ModalityRules.from_dataset_json(dataset_json).modality_of(case_id)

    def run_case_npy(self, data: np.ndarray, seg: Union[np.ndarray, None], properties: dict,
                     plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                     dataset_json: Union[dict, str], modality: Optional[str] = None):
        """nnU-Net's run_case_npy with the modality's normalization. `modality` defaults to properties["modality"]."""
        modality = modality if modality is not None else properties.get("modality")
        if modality is None:
            raise ModalityError("CINPreprocessor.run_case_npy needs the modality of the case: pass modality=NAME "
                                "(or set properties['modality'])")
        pm, cm = modality_managers(plans_manager, configuration_manager, modality, data.shape[0])
        properties["modality"] = modality
        properties["modality_index"] = CINPlans(plans_manager.plans).modalities.index(modality)
        return super().run_case_npy(data, seg, properties, pm, cm, dataset_json)

    # nnU-Net's run_case body (read images and seg, then run_case_npy), plus the modality
    def run_case(self, image_files: List[str], seg_file: Union[str, None], plans_manager: PlansManager,
                 configuration_manager: ConfigurationManager, dataset_json: Union[dict, str],
                 modality: Optional[str] = None):
        """modality None: resolved from the case id of `image_files` with the dataset.json rules."""
        if isinstance(dataset_json, str):
            dataset_json = load_json(dataset_json)
        if modality is None:
            modality = self.modality_of_files(image_files, dataset_json)
        rw = plans_manager.image_reader_writer_class()
        data, data_properties = rw.read_images(image_files)
        seg = rw.read_seg(seg_file)[0] if seg_file is not None else None
        if self.verbose:
            print(seg_file)
        return self.run_case_npy(data, seg, data_properties, plans_manager, configuration_manager, dataset_json,
                                 modality)

    # nnU-Net's run_case_save body, with the modality of the case resolved from its identifier (the output file
    # name, i.e. the key of nnU-Net's dataset dict) rather than from the image file names, which need not carry it
    # in file-list datasets
    def run_case_save(self, output_filename_truncated: str, image_files: List[str], seg_file: str,
                      plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                      dataset_json: Union[dict, str]):
        if isinstance(dataset_json, str):
            dataset_json = load_json(dataset_json)
        case_id = case_id_from_preprocessed_file(output_filename_truncated)
        modality = ModalityRules.from_dataset_json(dataset_json).modality_of(case_id)
        data, seg, properties = self.run_case(image_files, seg_file, plans_manager, configuration_manager,
                                              dataset_json, modality)
        data = data.astype(np.float32, copy=False)
        seg = seg.astype(np.int16, copy=False)
        block_size_data, chunk_size_data = comp_blosc2_params(data.shape, tuple(configuration_manager.patch_size),
                                                              data.itemsize)
        block_size_seg, chunk_size_seg = comp_blosc2_params(seg.shape, tuple(configuration_manager.patch_size),
                                                            seg.itemsize)
        nnUNetDatasetBlosc2.save_case(data, seg, properties, output_filename_truncated,
                                      chunks=chunk_size_data, blocks=block_size_data,
                                      chunks_seg=chunk_size_seg, blocks_seg=block_size_seg)
