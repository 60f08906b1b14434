"""nnU-Net's environment for our commands: its three folders, and our trainer folder on nnUNet_extTrainer."""
import os
import shlex
from typing import Dict, List, Mapping, Optional

NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def trainer_folder() -> str:
    """The folder nnU-Net must search for our trainers (the installed `nnunet_cin.trainers` package)."""
    import nnunet_cin.trainers

    return os.path.abspath(nnunet_cin.trainers.__path__[0])


def missing_variables(environ: Mapping[str, str], root: Optional[str] = None) -> Dict[str, str]:
    """{variable: value} for what `environ` lacks: nnU-Net's three folders (under `root`, only if `root` is given)
    and our trainer folder on nnUNet_extTrainer (appended, so the user's own trainer folders stay first)."""
    out = {}
    if root is not None:
        for name in NNUNET_FOLDERS:
            if not environ.get(name):
                out[name] = os.path.join(os.path.abspath(root), name)
    ours = trainer_folder()
    current = environ.get("nnUNet_extTrainer", "")
    known = [os.path.abspath(p) for p in current.split(os.pathsep) if p]
    if ours not in known:
        out["nnUNet_extTrainer"] = os.pathsep.join([*filter(None, current.split(os.pathsep)), ours])
    return out


def env_exports(environ: Mapping[str, str], root: Optional[str] = None) -> List[str]:
    """`missing_variables` as shell `export` lines (what `nnunet-cin env` prints)."""
    return [f"export {k}={shlex.quote(v)}" for k, v in missing_variables(environ, root).items()]


def with_our_trainers(environ: Mapping[str, str]) -> Dict[str, str]:
    """A copy of `environ` in which nnU-Net finds our trainers (for the nnU-Net commands we start)."""
    return {**environ, **missing_variables(environ)}
