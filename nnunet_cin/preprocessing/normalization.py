"""Our normalization schemes, and the one lookup of a scheme by name (ours and nnU-Net's).

nnU-Net finds a scheme by class name inside its own package only (DefaultPreprocessor._normalize), so
CINPreprocessor resolves names with `scheme_class` and dataset.json's "modality_normalization" accepts the names of
`SCHEME_NAMES` (nnU-Net's channel-name keys plus ours, case-insensitive).
"""
from typing import Dict, Type

import numpy as np
from nnunetv2.preprocessing.normalization.default_normalization_schemes import ImageNormalization
from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import \
    channel_name_to_normalization_mapping
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

HU_FLOOR = -1024.0  # air in a proper HU image; padding outside the scan circle (-2048, -3024) lies below it


class CTClipZScoreNormalization(ImageNormalization):
    """CT: clip to [-1024 HU, the 99.5th percentile of the modality's labelled foreground], then z-score per image.

    nnU-Net's CTNormalization clips below at the foreground's 0.5th percentile as well. For a structure of mostly
    bright voxels (contrast-filled heart: myocardium ~100 HU, blood ~300 HU) that floor lies near the myocardium, so
    fat, lung and air become one value and the structure's outer border loses its contrast. Here everything down to
    the HU floor keeps its contrast (values below it are padding, not anatomy), the bright outliers above the
    foreground (bone, metal, calibration rods) are clipped as nnU-Net does, and the per-image z-score gives the
    network the same input scale as nnU-Net's ZScoreNormalization. It needs Hounsfield units: an image with a +1024
    offset would lose everything above the foreground's upper percentile. Like CTNormalization it never uses the
    nonzero mask (0 HU is water, not outside)."""
    leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true = False

    def run(self, image: np.ndarray, seg: np.ndarray = None) -> np.ndarray:
        assert self.intensityproperties is not None, "CTClipZScoreNormalization requires intensity properties"
        eps = 1e-8 if self.target_dtype != np.float16 else 1e-4
        image = image.astype(self.target_dtype, copy=False)
        np.clip(image, HU_FLOOR, max(HU_FLOOR, self.intensityproperties["percentile_99_5"]), out=image)
        image -= image.mean()
        image /= max(image.std(), eps)
        return image


# dataset.json's scheme names (case-insensitive) -> class: nnU-Net's channel-name keys, then ours
SCHEME_NAMES: Dict[str, Type[ImageNormalization]] = {
    **channel_name_to_normalization_mapping,
    "ctclipzscore": CTClipZScoreNormalization,
}
OUR_SCHEMES = {c.__name__: c for c in (CTClipZScoreNormalization,)}


def scheme_class(class_name: str) -> Type[ImageNormalization]:
    """The normalization class of a plans entry (a class name): ours, else nnU-Net's lookup in its package."""
    if class_name in OUR_SCHEMES:
        return OUR_SCHEMES[class_name]
    import nnunetv2
    from os.path import join
    found = recursive_find_python_class(join(nnunetv2.__path__[0], "preprocessing", "normalization"), class_name,
                                        "nnunetv2.preprocessing.normalization")
    if found is None:
        raise RuntimeError(f"Unable to locate class '{class_name}' for normalization")
    return found
