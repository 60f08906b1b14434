"""The new cases' preprocessing: CINPreprocessor (nnU-Net's, with the modality's normalization), and for unlabelled
cases an all-background segmentation in place of the missing label: nnU-Net's training data loader crops a
segmentation with every image; the unlabelled objective never reads it."""
import numpy as np

from nnunet_cin.preprocessing.preprocessor import CINPreprocessor


class AdaptationPreprocessor(CINPreprocessor):
    def run_case(self, image_files, seg_file, plans_manager, configuration_manager, dataset_json, modality=None):
        if seg_file is not None:
            return super().run_case(image_files, seg_file, plans_manager, configuration_manager, dataset_json,
                                    modality)
        if modality is None:
            modality = self.modality_of_files(image_files, dataset_json)
        data, properties = plans_manager.image_reader_writer_class().read_images(image_files)
        seg = np.zeros((1, *data.shape[1:]), dtype=np.int16)
        return self.run_case_npy(data, seg, properties, plans_manager, configuration_manager, dataset_json, modality)
