"""nnU-Net's environment for our commands: its three folders, our trainer folder on nnUNet_extTrainer, and settings
for a small CPU machine (the demo, the benchmarks, the tests)."""
import os
import shlex
import warnings
from contextlib import contextmanager
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


def cpu_defaults(environ: Mapping[str, str], processes: Optional[int] = None,
                 augmentation_workers: Optional[int] = None, threads: Optional[int] = None) -> Dict[str, str]:
    """{variable: value} for what `environ` lacks of nnU-Net's settings for a small CPU machine (what the user set
    stays): `environ.update(cpu_defaults(environ))`, or `cpu_defaults({}, ...)` for the values alone.
      nnUNet_compile=false      torch.compile costs minutes before the first step; it pays off on long GPU runs
      OMP_WAIT_POLICY=PASSIVE   spinning OpenMP threads starve nnU-Net's augmentation and export workers
      nnUNet_def_n_proc         `processes` (default: the cores, at most 4): nnU-Net's 8 preprocessing/export
                                workers, each importing torch, cost minutes on a small machine
      nnUNet_n_proc_DA          `augmentation_workers`, only if given (0: augmentation in the training process)
      OMP_NUM_THREADS           `threads`, only if given
    nnU-Net reads its worker counts when imported: set them before the first `import nnunetv2`."""
    wanted = {"nnUNet_compile": "false", "OMP_WAIT_POLICY": "PASSIVE",
              "nnUNet_def_n_proc": processes if processes is not None else max(1, min(4, os.cpu_count() or 1)),
              "nnUNet_n_proc_DA": augmentation_workers, "OMP_NUM_THREADS": threads}
    return {k: str(v) for k, v in wanted.items() if v is not None and not environ.get(k)}


# Printed by a dependency while it is imported, about its own code, on the first lines of every command: timm (which
# our transformer networks use) decorates a class with torch.jit.interface, deprecated in torch 2.14.
IMPORT_NOISE = [(FutureWarning, r"`torch\.jit\.interface` is deprecated")]


@contextmanager
def quiet_imports():
    """Hides IMPORT_NOISE, and nothing else, while our command and trainer modules are imported: put around the imports
    of an entry point (console script, trainer module that nnU-Net's lookup imports). Not at the import of the library:
    a user's program keeps its own warning filters."""
    with warnings.catch_warnings():
        for category, message in IMPORT_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
