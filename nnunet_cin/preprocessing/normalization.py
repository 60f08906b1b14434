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

HU_RANGE = (-1024.0, 3071.0)  # what a 12-bit CT in HU can hold: air at -1024; padding outside the scan circle
# (-2048, -3024) lies below it, saturated metal above


class CTClipZScoreNormalization(ImageNormalization):
    """CT: clip to the Hounsfield range [-1024, 3071], then z-score each image by its own mean and standard deviation.

    On a CT whose values lie in that range this is exactly nnU-Net's ZScoreNormalization, the recipe plain nnU-Net uses
    for mixed CT + MR. What the clip adds: scanners pad the area outside the reconstruction circle with -2048 or
    -3024, and such a plateau would dominate a plain z-score (its mean and standard deviation, differently per
    scanner); saturated metal is cut at the 12-bit ceiling. Not nnU-Net's CTNormalization: that one clips to the
    labelled foreground's 0.5-99.5 percentiles, and for a contrast-filled heart (myocardium ~100 HU, blood ~300 HU)
    the floor lies above the fat, so fat, lung and air become one value and the heart's outer border loses its
    contrast (documentation/comparison.md, "Which normalization"). Like CTNormalization it never uses the nonzero
    mask (0 HU is water, not outside) and needs no statistics."""
    leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true = False

    def run(self, image: np.ndarray, seg: np.ndarray = None) -> np.ndarray:
        eps = 1e-8 if self.target_dtype != np.float16 else 1e-4
        image = image.astype(self.target_dtype, copy=False)
        np.clip(image, *HU_RANGE, out=image)
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
