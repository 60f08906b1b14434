"""`nnunet-cin`: helper commands around nnU-Net's own (`nnunet-cin env`, `nnunet-cin demo`, ...)."""
import argparse
import os
import shlex
import sys
from typing import Optional, Sequence

from nnunet_cin.environment import NNUNET_FOLDERS, cpu_defaults, env_exports


def _env(args) -> int:
    lines = env_exports(os.environ, args.root)
    if args.cpu:
        lines += [f"export {k}={shlex.quote(v)}" for k, v in cpu_defaults(os.environ).items()]
    print("\n".join(lines) if lines else "# nothing to export: your environment already has everything")
    missing = [n for n in NNUNET_FOLDERS if not os.environ.get(n)]
    if missing and args.root is None:
        print(f"# not set: {', '.join(missing)} (set them as for nnU-Net, or: nnunet-cin env --root DIR)",
              file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="nnunet-cin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("env", help="print the shell export lines nnU-Net needs to find our trainers: "
                                   "eval \"$(nnunet-cin env)\"")
    p.add_argument("--root", default=None, help="also export nnUNet_raw/_preprocessed/_results under this folder "
                                                "for those not set yet")
    p.add_argument("--cpu", action="store_true", help="also export nnU-Net's settings for a small CPU machine "
                                                      "(no torch.compile, passive OpenMP threads, at most 4 "
                                                      "workers) for those not set yet")
    p.set_defaults(func=_env)

    from nnunet_cin.experiments import demo
    p = sub.add_parser("demo", help="the whole workflow on generated CT and MR hearts: generate, plan, train, "
                                    "predict per modality, evaluate, overlays",
                       description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(p)
    p.set_defaults(func=demo.run)

    from nnunet_cin.experiments import compare
    p = sub.add_parser("compare", help="the paper's comparison (single-modality, fine-tuning, joint, conditional) "
                                       "with nnU-Net's commands: Markdown table, CSV, bar plot; resumable",
                       description=compare.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    compare.add_arguments(p)
    p.set_defaults(func=compare.run)

    from nnunet_cin.training import convert_pretrained
    p = sub.add_parser("convert-pretrained", help="convert an nnU-Net checkpoint (plain or conditional) into the "
                                                  "layout of a trainer's network, for nnUNetv2_train "
                                                  "-pretrained_weights", description=convert_pretrained.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    convert_pretrained.add_arguments(p)
    p.set_defaults(func=convert_pretrained.run)

    from nnunet_cin.add_modality import command as add_modality
    p = sub.add_parser("add-modality", help="a trained conditional model gains a modality from a few labelled cases "
                                            "(or unlabelled images): new CIN rows, everything else frozen, the "
                                            "model's modalities predict exactly as before",
                       description=add_modality.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_modality.add_arguments(p)
    p.set_defaults(func=add_modality.run)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    from nnunet_cin.environment import quiet_imports

    with quiet_imports():
        sys.exit(main())
