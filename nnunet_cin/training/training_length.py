"""nnU-Net's shorter schedules of each of our trainers, one literal class each, as nnU-Net writes its own
(nnunetv2/training/nnUNetTrainer/variants/training_length/nnUNetTrainer_Xepochs.py): `-tr nnUNetTrainerCIN_50epochs`.
The trainers/ folder (nnUNet_extTrainer) imports them by name where nnU-Net's search finds them. A length of your own
is one line too, in your trainer folder: `class nnUNetTrainerCIN_3epochs(nnUNetTrainerCIN): schedule_epochs = 3`
(nnunet_cin.training.mixins.ShortSchedule)."""
from nnunet_cin.training.baselines import (nnUNetTrainerJoint, nnUNetTrainerJointAlternate,
                                           nnUNetTrainerSingleModality_CT, nnUNetTrainerSingleModality_MR,
                                           nnUNetTrainerSingleModality_T2)
from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN
from nnunet_cin.training.transformer_trainers import (nnUNetTrainerCViT, nnUNetTrainerViTJoint,
                                                      nnUNetTrainerCSwinUNETR, nnUNetTrainerSwinUNETRJoint)
from nnunet_cin.training.variants import (nnUNetTrainerCINAdapters, nnUNetTrainerCINAllNorms,
                                          nnUNetTrainerCINAlternate)


class nnUNetTrainerCIN_1epoch(nnUNetTrainerCIN): schedule_epochs = 1
class nnUNetTrainerCIN_5epochs(nnUNetTrainerCIN): schedule_epochs = 5
class nnUNetTrainerCIN_10epochs(nnUNetTrainerCIN): schedule_epochs = 10
class nnUNetTrainerCIN_20epochs(nnUNetTrainerCIN): schedule_epochs = 20
class nnUNetTrainerCIN_50epochs(nnUNetTrainerCIN): schedule_epochs = 50
class nnUNetTrainerCIN_100epochs(nnUNetTrainerCIN): schedule_epochs = 100
class nnUNetTrainerCIN_250epochs(nnUNetTrainerCIN): schedule_epochs = 250


class nnUNetTrainerCINAllNorms_1epoch(nnUNetTrainerCINAllNorms): schedule_epochs = 1
class nnUNetTrainerCINAllNorms_5epochs(nnUNetTrainerCINAllNorms): schedule_epochs = 5
class nnUNetTrainerCINAllNorms_10epochs(nnUNetTrainerCINAllNorms): schedule_epochs = 10
class nnUNetTrainerCINAllNorms_20epochs(nnUNetTrainerCINAllNorms): schedule_epochs = 20
class nnUNetTrainerCINAllNorms_50epochs(nnUNetTrainerCINAllNorms): schedule_epochs = 50
class nnUNetTrainerCINAllNorms_100epochs(nnUNetTrainerCINAllNorms): schedule_epochs = 100
class nnUNetTrainerCINAllNorms_250epochs(nnUNetTrainerCINAllNorms): schedule_epochs = 250


class nnUNetTrainerCINAdapters_1epoch(nnUNetTrainerCINAdapters): schedule_epochs = 1
class nnUNetTrainerCINAdapters_5epochs(nnUNetTrainerCINAdapters): schedule_epochs = 5
class nnUNetTrainerCINAdapters_10epochs(nnUNetTrainerCINAdapters): schedule_epochs = 10
class nnUNetTrainerCINAdapters_20epochs(nnUNetTrainerCINAdapters): schedule_epochs = 20
class nnUNetTrainerCINAdapters_50epochs(nnUNetTrainerCINAdapters): schedule_epochs = 50
class nnUNetTrainerCINAdapters_100epochs(nnUNetTrainerCINAdapters): schedule_epochs = 100
class nnUNetTrainerCINAdapters_250epochs(nnUNetTrainerCINAdapters): schedule_epochs = 250


class nnUNetTrainerCINAlternate_1epoch(nnUNetTrainerCINAlternate): schedule_epochs = 1
class nnUNetTrainerCINAlternate_5epochs(nnUNetTrainerCINAlternate): schedule_epochs = 5
class nnUNetTrainerCINAlternate_10epochs(nnUNetTrainerCINAlternate): schedule_epochs = 10
class nnUNetTrainerCINAlternate_20epochs(nnUNetTrainerCINAlternate): schedule_epochs = 20
class nnUNetTrainerCINAlternate_50epochs(nnUNetTrainerCINAlternate): schedule_epochs = 50
class nnUNetTrainerCINAlternate_100epochs(nnUNetTrainerCINAlternate): schedule_epochs = 100
class nnUNetTrainerCINAlternate_250epochs(nnUNetTrainerCINAlternate): schedule_epochs = 250


class nnUNetTrainerJoint_1epoch(nnUNetTrainerJoint): schedule_epochs = 1
class nnUNetTrainerJoint_5epochs(nnUNetTrainerJoint): schedule_epochs = 5
class nnUNetTrainerJoint_10epochs(nnUNetTrainerJoint): schedule_epochs = 10
class nnUNetTrainerJoint_20epochs(nnUNetTrainerJoint): schedule_epochs = 20
class nnUNetTrainerJoint_50epochs(nnUNetTrainerJoint): schedule_epochs = 50
class nnUNetTrainerJoint_100epochs(nnUNetTrainerJoint): schedule_epochs = 100
class nnUNetTrainerJoint_250epochs(nnUNetTrainerJoint): schedule_epochs = 250


class nnUNetTrainerJointAlternate_1epoch(nnUNetTrainerJointAlternate): schedule_epochs = 1
class nnUNetTrainerJointAlternate_5epochs(nnUNetTrainerJointAlternate): schedule_epochs = 5
class nnUNetTrainerJointAlternate_10epochs(nnUNetTrainerJointAlternate): schedule_epochs = 10
class nnUNetTrainerJointAlternate_20epochs(nnUNetTrainerJointAlternate): schedule_epochs = 20
class nnUNetTrainerJointAlternate_50epochs(nnUNetTrainerJointAlternate): schedule_epochs = 50
class nnUNetTrainerJointAlternate_100epochs(nnUNetTrainerJointAlternate): schedule_epochs = 100
class nnUNetTrainerJointAlternate_250epochs(nnUNetTrainerJointAlternate): schedule_epochs = 250


class nnUNetTrainerSingleModality_CT_1epoch(nnUNetTrainerSingleModality_CT): schedule_epochs = 1
class nnUNetTrainerSingleModality_CT_5epochs(nnUNetTrainerSingleModality_CT): schedule_epochs = 5
class nnUNetTrainerSingleModality_CT_10epochs(nnUNetTrainerSingleModality_CT): schedule_epochs = 10
class nnUNetTrainerSingleModality_CT_20epochs(nnUNetTrainerSingleModality_CT): schedule_epochs = 20
class nnUNetTrainerSingleModality_CT_50epochs(nnUNetTrainerSingleModality_CT): schedule_epochs = 50
class nnUNetTrainerSingleModality_CT_100epochs(nnUNetTrainerSingleModality_CT): schedule_epochs = 100
class nnUNetTrainerSingleModality_CT_250epochs(nnUNetTrainerSingleModality_CT): schedule_epochs = 250


class nnUNetTrainerSingleModality_MR_1epoch(nnUNetTrainerSingleModality_MR): schedule_epochs = 1
class nnUNetTrainerSingleModality_MR_5epochs(nnUNetTrainerSingleModality_MR): schedule_epochs = 5
class nnUNetTrainerSingleModality_MR_10epochs(nnUNetTrainerSingleModality_MR): schedule_epochs = 10
class nnUNetTrainerSingleModality_MR_20epochs(nnUNetTrainerSingleModality_MR): schedule_epochs = 20
class nnUNetTrainerSingleModality_MR_50epochs(nnUNetTrainerSingleModality_MR): schedule_epochs = 50
class nnUNetTrainerSingleModality_MR_100epochs(nnUNetTrainerSingleModality_MR): schedule_epochs = 100
class nnUNetTrainerSingleModality_MR_250epochs(nnUNetTrainerSingleModality_MR): schedule_epochs = 250


class nnUNetTrainerSingleModality_T2_1epoch(nnUNetTrainerSingleModality_T2): schedule_epochs = 1
class nnUNetTrainerSingleModality_T2_5epochs(nnUNetTrainerSingleModality_T2): schedule_epochs = 5
class nnUNetTrainerSingleModality_T2_10epochs(nnUNetTrainerSingleModality_T2): schedule_epochs = 10
class nnUNetTrainerSingleModality_T2_20epochs(nnUNetTrainerSingleModality_T2): schedule_epochs = 20
class nnUNetTrainerSingleModality_T2_50epochs(nnUNetTrainerSingleModality_T2): schedule_epochs = 50
class nnUNetTrainerSingleModality_T2_100epochs(nnUNetTrainerSingleModality_T2): schedule_epochs = 100
class nnUNetTrainerSingleModality_T2_250epochs(nnUNetTrainerSingleModality_T2): schedule_epochs = 250


class nnUNetTrainerCViT_1epoch(nnUNetTrainerCViT): schedule_epochs = 1
class nnUNetTrainerCViT_5epochs(nnUNetTrainerCViT): schedule_epochs = 5
class nnUNetTrainerCViT_10epochs(nnUNetTrainerCViT): schedule_epochs = 10
class nnUNetTrainerCViT_20epochs(nnUNetTrainerCViT): schedule_epochs = 20
class nnUNetTrainerCViT_50epochs(nnUNetTrainerCViT): schedule_epochs = 50
class nnUNetTrainerCViT_100epochs(nnUNetTrainerCViT): schedule_epochs = 100
class nnUNetTrainerCViT_250epochs(nnUNetTrainerCViT): schedule_epochs = 250


class nnUNetTrainerViTJoint_1epoch(nnUNetTrainerViTJoint): schedule_epochs = 1
class nnUNetTrainerViTJoint_5epochs(nnUNetTrainerViTJoint): schedule_epochs = 5
class nnUNetTrainerViTJoint_10epochs(nnUNetTrainerViTJoint): schedule_epochs = 10
class nnUNetTrainerViTJoint_20epochs(nnUNetTrainerViTJoint): schedule_epochs = 20
class nnUNetTrainerViTJoint_50epochs(nnUNetTrainerViTJoint): schedule_epochs = 50
class nnUNetTrainerViTJoint_100epochs(nnUNetTrainerViTJoint): schedule_epochs = 100
class nnUNetTrainerViTJoint_250epochs(nnUNetTrainerViTJoint): schedule_epochs = 250


class nnUNetTrainerCSwinUNETR_1epoch(nnUNetTrainerCSwinUNETR): schedule_epochs = 1
class nnUNetTrainerCSwinUNETR_5epochs(nnUNetTrainerCSwinUNETR): schedule_epochs = 5
class nnUNetTrainerCSwinUNETR_10epochs(nnUNetTrainerCSwinUNETR): schedule_epochs = 10
class nnUNetTrainerCSwinUNETR_20epochs(nnUNetTrainerCSwinUNETR): schedule_epochs = 20
class nnUNetTrainerCSwinUNETR_50epochs(nnUNetTrainerCSwinUNETR): schedule_epochs = 50
class nnUNetTrainerCSwinUNETR_100epochs(nnUNetTrainerCSwinUNETR): schedule_epochs = 100
class nnUNetTrainerCSwinUNETR_250epochs(nnUNetTrainerCSwinUNETR): schedule_epochs = 250


class nnUNetTrainerSwinUNETRJoint_1epoch(nnUNetTrainerSwinUNETRJoint): schedule_epochs = 1
class nnUNetTrainerSwinUNETRJoint_5epochs(nnUNetTrainerSwinUNETRJoint): schedule_epochs = 5
class nnUNetTrainerSwinUNETRJoint_10epochs(nnUNetTrainerSwinUNETRJoint): schedule_epochs = 10
class nnUNetTrainerSwinUNETRJoint_20epochs(nnUNetTrainerSwinUNETRJoint): schedule_epochs = 20
class nnUNetTrainerSwinUNETRJoint_50epochs(nnUNetTrainerSwinUNETRJoint): schedule_epochs = 50
class nnUNetTrainerSwinUNETRJoint_100epochs(nnUNetTrainerSwinUNETRJoint): schedule_epochs = 100
class nnUNetTrainerSwinUNETRJoint_250epochs(nnUNetTrainerSwinUNETRJoint): schedule_epochs = 250
