"""Variants of the conditional model, one option changed each (arms of `nnunet-cin compare`):

- nnUNetTrainerCINAllNorms: CIN in every instance norm of the U-Net, the decoder's too (the method conditions the
  encoder only); `scope="all"` of nnunet_cin.networks.unet.make_conditional, recorded in the plans as the
  architecture's `cin_scope`.
- nnUNetTrainerCINAdapters: CIN in every norm and, after each, a residual 1x1 adapter of every modality's own
  (nnunet_cin.networks.adapters): capacity per modality that mixes channels, not only rescales them; recorded in the
  plans as the architecture's `adapter_modalities`.
- nnUNetTrainerCINAlternate: conditional, but each batch holds one modality in turn (the joint-training baseline's
  schedule, nnunet_cin.training.sampling) instead of mixed batches.
"""
from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN


class nnUNetTrainerCINAllNorms(nnUNetTrainerCIN):
    cin_scope = "all"


class nnUNetTrainerCINAdapters(nnUNetTrainerCIN):
    cin_scope = "all"
    adapters = True

    def initialize(self):
        super().initialize()
        from nnunet_cin.networks.adapters import adapter_parameters
        total = sum(p.numel() for p in self.network.parameters())
        added = adapter_parameters(self.network)
        self.print_to_log_file(f"Residual adapters: {added} of the network's {total} parameters "
                               f"({100 * added / total:.1f} %), {added // len(self.modalities)} per modality",
                               also_print_to_console=True)


class nnUNetTrainerCINAlternate(nnUNetTrainerCIN):
    modality_sampling = "alternate"
