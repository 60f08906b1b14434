"""Pretrained weights across plain and conditional networks, for nnU-Net's own `-pretrained_weights`.

nnU-Net's `nnUNetv2_train ... -pretrained_weights FILE` loads FILE with its own, unmodified loader, which asks every
parameter of the new network (but the segmentation heads) to exist in FILE with the same shape. So:

- a checkpoint of a conditional trainer loads directly into a conditional trainer with the same modalities (and a
  plain/Joint/SingleModality checkpoint into a plain baseline): same shapes, nothing to do;
- anything else is converted once, explicitly, into the layout of the network it is meant for:
      convert_checkpoint(IN.pth, OUT.pth, dataset=ID, configuration="3d_fullres", plans="nnUNetPlansCIN",
                         trainer="nnUNetTrainerCIN")
  then `nnUNetv2_train ID 3d_fullres FOLD -tr nnUNetTrainerCIN -p nnUNetPlansCIN -pretrained_weights OUT.pth`.

Works for every trainer of ours as the target (conv U-Nets, UNETR, Swin-UNETR; plain, conditional, single-modality):
the target network is the one the trainer builds from the dataset's plans (`plans_for_training`). Conversions of the
normalization parameters (everything else is copied as is; nnU-Net's loader checks it):
  plain InstanceNorm (C,) -> CIN (M, C): copied into every modality row (the converted network computes exactly what
      the pretrained one computed, for every modality);
  LayerNorm (C,) of a transformer (nnUNetTrainerViTJoint, nnUNetTrainerSwinUNETRJoint) -> CIN over the tokens
      (M, C) (nnUNetTrainerCViT, nnUNetTrainerCSwinUNETR): the affine copied into every modality row. The conv blocks
      then compute what they computed; the transformer norms do not, because LayerNorm normalizes each token over
      its channels and CIN each channel over the tokens: a starting point to fine-tune, as in the paper;
  CIN (M', C) -> CIN (M, C): rows matched by modality name (the checkpoint's modalities); a modality the checkpoint
      lacks gets the mean of its rows;
  CIN (M, C) -> plain (C,): the mean over the rows (e.g. a conditional model as the start of a Joint baseline).
Weights of one architecture do not convert into another (a conv U-Net into a UNETR): that is refused in one line.
The converted file is an nnU-Net checkpoint holding "network_weights" and "modalities" (what the target trainer will
record), plus "architecture" and "converted_from" (source file, trainer name, modalities) for the record.
"""
import os
import sys
from typing import Dict, Optional, Sequence

import torch
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_cin.cin import cin_layers
from nnunet_cin.networks.unet import plans_class_path
from nnunet_cin.plans import checkpoint_modalities


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers (what nnU-Net saves)."""
    if isinstance(network, DDP):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def cin_parameter_names(module: nn.Module) -> set:
    """State-dict keys of the CIN weights and biases of `module` (all names a shared layer is registered under)."""
    ids = {id(layer) for layer in cin_layers(module)}
    return {f"{prefix}.{p}" for prefix, m in module.named_modules(remove_duplicate=False) if id(m) in ids
            for p in ("weight", "bias")}


def convert_state_dict(weights: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor], cin_keys: set,
                       target_modalities: Optional[Sequence[str]] = None,
                       source_modalities: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
    """`weights` with its normalization parameters reshaped to the layout of `target` (a state dict), see the module
    docstring. Keys whose shapes already agree, and keys `target` does not have, are returned unchanged."""
    out = dict(weights)
    for key, value in weights.items():
        if key not in target or target[key].shape == value.shape:
            continue
        want = target[key]
        if key in cin_keys and value.dim() == 1 and want.dim() == 2 and want.shape[1] == value.shape[0]:
            out[key] = value[None].expand(want.shape).clone().to(want.dtype)  # plain -> CIN
        elif key in cin_keys and value.dim() == 2 and want.dim() == 2 and want.shape[1] == value.shape[1]:
            out[key] = _match_rows(key, value, want, target_modalities, source_modalities)  # CIN -> CIN
        elif value.dim() == 2 and want.dim() == 1 and value.shape[1] == want.shape[0]:
            out[key] = value.mean(0).to(want.dtype)  # CIN -> plain
    return out


def _match_rows(key, value, target, target_modalities, source_modalities):
    if not source_modalities or not target_modalities:
        raise ValueError(f"{key}: the pretrained CIN layer has {value.shape[0]} modalities, the target network "
                         f"{target.shape[0]}; the rows can only be matched by modality name, and the checkpoint "
                         f"records none (checkpoint['modalities'])")
    if len(source_modalities) != value.shape[0]:
        raise ValueError(f"{key}: the checkpoint names {len(source_modalities)} modalities {list(source_modalities)} "
                         f"but its CIN layer has {value.shape[0]} rows")
    rows = [value[list(source_modalities).index(n)] if n in source_modalities else value.mean(0)
            for n in target_modalities]
    return torch.stack(rows).to(target.dtype)


def convert_weights_for_network(checkpoint: dict, network: nn.Module, modalities: Optional[Sequence[str]],
                                source: str = "the checkpoint") -> Dict[str, torch.Tensor]:
    """checkpoint["network_weights"] in the layout of `network`; raises, as nnU-Net's loader would, naming the first
    parameter that is still missing or of another shape (segmentation heads excepted)."""
    mod = unwrap(network)
    target = mod.state_dict()
    weights = convert_state_dict(checkpoint["network_weights"], target, cin_parameter_names(mod), modalities,
                                 checkpoint_modalities(checkpoint))
    for key, value in target.items():
        if ".seg_layers." in key:
            continue
        if key not in weights:
            raise ValueError(f"{source}: parameter {key} of the target network is missing; the checkpoint is not "
                             f"from the same architecture (check plans and configuration)")
        if weights[key].shape != value.shape:
            raise ValueError(f"{source}: parameter {key} has shape {tuple(weights[key].shape)}, the target network "
                             f"wants {tuple(value.shape)}; the checkpoint is not from the same architecture")
    return {k: v for k, v in weights.items() if k in target}


def target_network(plans: dict, configuration: str, dataset_json: dict, trainer: type) -> nn.Module:
    """The network `trainer` builds for the dataset's plans, without making a trainer (no output folders, no log
    file): the plans as the trainer rewrites them (`plans_for_training`, for trainers of ours; nnU-Net's own trainers
    train the plans as they are), then the trainer's build_network_architecture, as nnU-Net calls it."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if hasattr(trainer, "plans_for_training"):
        plans = trainer.plans_for_training(plans, configuration, dataset_json)
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    return trainer.build_network_architecture(pm, cm, determine_num_input_channels(pm, cm, dataset_json),
                                              pm.get_label_manager(dataset_json).num_segmentation_heads, True)


def convert_checkpoint(source: str, destination: str, dataset, configuration: str = "3d_fullres",
                       plans: str = "nnUNetPlansCIN", trainer: str = "nnUNetTrainerCIN") -> str:
    """Write `destination`: the checkpoint `source` (any nnU-Net or nnunet-cin checkpoint of the same architecture)
    converted for `nnUNetv2_train dataset configuration FOLD -tr trainer -p plans -pretrained_weights destination`.

    dataset: nnU-Net dataset name or id (its plans and dataset.json are read from nnUNet_preprocessed). Returns
    `destination`. The source file is not modified."""
    from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_cin.modalities import ModalityRules
    from nnunet_cin.plans import CINPlans

    if not isfile(source):
        raise FileNotFoundError(f"pretrained checkpoint {source} does not exist")
    if os.path.abspath(source) == os.path.abspath(destination):
        raise ValueError("convert_checkpoint writes a new file: give a destination other than the source")
    folder = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset))
    plans_file = join(folder, plans + ".json")
    if not isfile(plans_file):
        raise FileNotFoundError(f"plans {plans_file} not found: plan and preprocess the dataset first "
                                f"(nnUNetv2_plan_and_preprocess_cin -d {dataset}) or name the plans with -p")
    plans_dict, dataset_json = load_json(plans_file), load_json(join(folder, "dataset.json"))
    if configuration not in plans_dict["configurations"]:
        raise ValueError(f"configuration {configuration!r} is not in {plans_file}; available: "
                         f"{sorted(plans_dict['configurations'])}")
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ValueError(f"{source} is not an nnU-Net checkpoint (no 'network_weights')")
    trainer_class = recursive_find_trainer_class_by_name(trainer)
    network = target_network(plans_dict, configuration, dataset_json, trainer_class)
    source_arch, target_arch = architecture_of(checkpoint), type(unwrap(network)).__name__
    if source_arch is not None and _family(source_arch) != _family(target_arch):
        raise ValueError(f"{source} holds a {source_arch.split('.')[-1]} ({checkpoint.get('trainer_name')}), "
                         f"{trainer} trains a {target_arch}: weights convert only between the plain and conditional "
                         f"forms of one architecture, and between modality sets")
    rules = ModalityRules.from_dataset_json(dataset_json) if dataset_json is not None else None
    modalities = CINPlans(plans_dict).training_modalities(rules)  # the target's CIN rows
    recorded = CINPlans(trainer_class.plans_for_training(plans_dict, configuration, dataset_json)).modalities \
        if hasattr(trainer_class, "plans_for_training") else modalities
    weights = convert_weights_for_network(checkpoint, network, modalities, source)
    torch.save({"network_weights": weights,
                "modalities": recorded,  # what the trainer records: the modalities the model will serve
                "architecture": plans_class_path(type(unwrap(network))),
                "converted_from": {"file": os.path.abspath(source), "trainer_name": checkpoint.get("trainer_name"),
                                   "modalities": checkpoint_modalities(checkpoint)},
                "trainer_name": trainer}, destination)
    return destination


def architecture_of(checkpoint: dict) -> Optional[str]:
    """The network class a checkpoint's weights belong to: from the plans it was trained with (nnU-Net's
    init_args), or recorded by convert_checkpoint. None when the checkpoint does not say."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if checkpoint.get("architecture"):
        return checkpoint["architecture"]
    init_args = checkpoint.get("init_args") or {}
    if not init_args.get("plans") or init_args.get("configuration") is None:
        return None
    try:
        return PlansManager(init_args["plans"]).get_configuration(init_args["configuration"]).network_arch_class_name
    except (KeyError, TypeError):
        return None


def _family(network_class_name: str) -> str:
    """The architecture a network class is a form of: the plain and conditional forms (PlainConvUNet,
    ConditionalPlainConvUNet; UNETR with LayerNorm or CIN) are one family."""
    name = network_class_name.split(".")[-1]
    return name[len("Conditional"):] if name.startswith("Conditional") else name


# ------------------------------------------------------------------------------------------ command line (cli.py)
def add_arguments(parser) -> None:
    """Arguments of `nnunet-cin convert-pretrained` (wired up in nnunet_cin.cli)."""
    parser.add_argument("source", help="nnU-Net checkpoint to start from (e.g. .../fold_0/checkpoint_final.pth of a "
                                       "plain nnUNetTrainer model)")
    parser.add_argument("destination", help="converted checkpoint to write (for nnUNetv2_train -pretrained_weights)")
    parser.add_argument("-d", "--dataset", required=True, help="dataset name or id you will train on")
    parser.add_argument("-c", "--configuration", default="3d_fullres")
    parser.add_argument("-p", "--plans", default="nnUNetPlansCIN", help="plans identifier you will train with")
    parser.add_argument("-tr", "--trainer", default="nnUNetTrainerCIN", help="trainer you will train with")


def run(args) -> int:
    """`nnunet-cin convert-pretrained`: convert, then print the nnUNetv2_train command that uses the result. A
    conversion that cannot be made is one line on stderr (exit code 2), nothing is written."""
    try:
        out = convert_checkpoint(args.source, args.destination, args.dataset, args.configuration, args.plans,
                                 args.trainer)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"nnunet-cin convert-pretrained: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {out}\ntrain with:\n  nnUNetv2_train {args.dataset} {args.configuration} FOLD -tr {args.trainer} "
          f"-p {args.plans} -pretrained_weights {out}")
    return 0
