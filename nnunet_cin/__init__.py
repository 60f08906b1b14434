"""nnunet-cin: one nnU-Net model for several imaging modalities, conditioned through its normalization layers."""
from nnunet_cin.cin import (ConditionalInstanceNorm1d, ConditionalInstanceNorm2d, ConditionalInstanceNorm3d,
                            condition)

__all__ = ["ConditionalInstanceNorm1d", "ConditionalInstanceNorm2d", "ConditionalInstanceNorm3d", "condition"]
