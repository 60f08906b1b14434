"""Networks: dynamic_network_architectures' U-Nets with CIN in the encoder, and the transformer encoders (C-ViT UNETR,
C-Swin-UNETR). Plans name every class as `nnunet_cin.networks.<Class>` (see `plans_class_path`), so a model folder
keeps working whichever module of this package defines the class."""
from nnunet_cin.networks.swin import ConditionalSwinUNETR
from nnunet_cin.networks.unet import (ConditionalPlainConvUNet, ConditionalResidualEncoderUNet, conditional_architecture,
                                      make_conditional, plans_class_path)
from nnunet_cin.networks.unetr import ConditionalUNETR


__all__ = ["ConditionalPlainConvUNet", "ConditionalResidualEncoderUNet", "ConditionalUNETR", "ConditionalSwinUNETR",
           "conditional_architecture", "make_conditional", "plans_class_path"]
