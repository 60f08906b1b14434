"""What the tests share when they drive nnU-Net: its commands in subprocesses and the environment they run in, tiny
planned datasets, training logs read back, and the short schedules of users' trainers.

Users' trainers live in their own folder on nnUNet_extTrainer, next to ours, as README tells users to do: a test
writes a small module there (`write_user_trainers`) whose classes combine a trainer of ours (or nnU-Net's) with the
mixins below, e.g.

    class nnUNetTrainerCINTest(ShortRun, nnUNetTrainerCIN):
        schedule_epochs, schedule_iterations = 2, 3

nnU-Net imports that module itself (in the subprocess of nnUNetv2_train, or in-process through its trainer lookup);
`nnunet_environment` puts this folder on PYTHONPATH so that it finds this module.
"""
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch

import nnunet_cin.trainers
from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset
from nnunet_cin.environment import cpu_defaults
from nnunet_cin.training.mixins import ShortSchedule

BIN = Path(sys.executable).parent  # this environment's console scripts (nnUNetv2_*, nnunet-cin)
OUR_TRAINERS = nnunet_cin.trainers.__path__[0]
TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------------ commands
@dataclass
class Ran:
    command: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def out(self) -> str:
        """stdout and stderr together (nnU-Net prints to both)."""
        return self.stdout + self.stderr


def run(command: Sequence, env: Mapping[str, str], extra_env: Optional[Mapping[str, str]] = None, *,
        ok: bool = True, timeout: float = 900) -> Ran:
    """Run `command` in a subprocess: its first element a console script of this environment ("nnUNetv2_train",
    "nnunet-cin"), or a path (sys.executable for `python -m ...`). ok=True: it must succeed (the assertion shows the
    command and the end of its output)."""
    program = str(command[0])
    if os.sep not in program and (BIN / program).exists():
        program = str(BIN / program)
    argv = [program, *map(str, command[1:])]
    result = subprocess.run(argv, env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=timeout)
    ran = Ran(" ".join(argv), result.returncode, result.stdout, result.stderr)
    if ok:
        assert ran.returncode == 0, f"{ran.command} failed ({ran.returncode}):\n{ran.stdout[-3000:]}\n" \
                                    f"{ran.stderr[-5000:]}"
    return ran


def main_in_process(main, argv: Sequence, env: Optional[Mapping[str, str]] = None) -> Ran:
    """A command's `main(argv)` in this process (a subprocess would pay ~10 s of imports per call): its exit code
    (argparse's SystemExit included) and what it printed, not what its worker processes print. `env`: variables set
    while it runs, restored afterwards, as is torch's thread count (nnU-Net's planner sets it)."""
    import contextlib
    import io

    argv = [str(a) for a in argv]
    out, err, threads, before = io.StringIO(), io.StringIO(), torch.get_num_threads(), dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
    finally:
        os.environ.clear()
        os.environ.update(before)
        torch.set_num_threads(threads)
    return Ran(" ".join(argv), code, out.getvalue(), err.getvalue())


def plan_in_process(*argv, returncode: int = 0) -> Ran:
    """nnUNetv2_plan_and_preprocess_cin's main(argv) in this process and its environment (`main_in_process`); the
    console script itself is run by the tiny model's fixture and test_packaging."""
    from nnunet_cin.planning.plan_and_preprocess import main
    ran = main_in_process(main, argv)
    assert ran.returncode == returncode, f"{ran.command}: {ran.returncode}\n{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}"
    return ran


def nnunet_environment(paths, ext_trainers: Iterable = (), **overrides: str) -> dict:
    """os.environ for nnU-Net's commands: the folders of `paths` (.raw, .preprocessed, .results), CPU settings for a
    shared 2-core machine (no torch.compile, augmentation in the main process, one export worker), nnUNet_extTrainer
    = the users' trainer folders, then ours; this folder on PYTHONPATH (users' trainer modules import the mixins
    of this module). `overrides`: further variables."""
    env = dict(os.environ, **cpu_defaults({}, processes=1, augmentation_workers=0),
               nnUNet_raw=str(paths.raw), nnUNet_preprocessed=str(paths.preprocessed),
               nnUNet_results=str(paths.results),
               nnUNet_extTrainer=os.pathsep.join([*map(str, ext_trainers), OUR_TRAINERS]),
               PYTHONPATH=os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.update(overrides)
    return env


def nnunet_folders(root: Path) -> SimpleNamespace:
    """root/raw, root/preprocessed, root/results (created)."""
    paths = SimpleNamespace(raw=root / "raw", preprocessed=root / "preprocessed", results=root / "results")
    for p in vars(paths).values():
        p.mkdir(parents=True, exist_ok=True)
    return paths


# ------------------------------------------------------------------------------------------------------ datasets
def plan_synthetic_dataset(root: Path, dataset_id: int, cases_per_modality: Mapping[str, int], shape=(24, 24, 24), *,
                           name: str = "SyntheticHeart", planner_command: str = "nnUNetv2_plan_and_preprocess",
                           configurations: Sequence[str] = ("3d_fullres",), test_cases_per_modality: int = 0,
                           seed: int = 0, **env_overrides: str) -> SimpleNamespace:
    """Generated CT/MR cases (nnunet_cin.dataset_conversion.synthetic) in root/raw, planned and preprocessed by
    `planner_command` (nnU-Net's, or nnUNetv2_plan_and_preprocess_cin). Returns the folders (nnunet_folders) with
    dataset_id and folder_name."""
    paths = nnunet_folders(root)
    folder = write_nnunet_dataset(paths.raw, dataset_id, name, cases_per_modality=cases_per_modality, shape=shape,
                                  test_cases_per_modality=test_cases_per_modality, seed=seed)
    # nnU-Net's planner sets torch's thread count from nnUNet_n_proc_DA: 0 is not allowed there
    run([planner_command, "-d", dataset_id, "-c", *configurations, "-np", 1, "-npfp", 1],
        nnunet_environment(paths, nnUNet_n_proc_DA="1", **env_overrides))
    paths.dataset_id, paths.folder_name = dataset_id, folder.name
    return paths


def narrower_plans(plans: dict, plans_name: str, features_per_stage=(4, 8, 16),
                   configuration: str = "3d_fullres") -> dict:
    """A copy of `plans` named `plans_name`, with a narrower U-Net (a user's plans edit: same data_identifier, so the
    same preprocessed data) that trains fast on CPU."""
    import copy

    plans = copy.deepcopy(plans)
    plans["plans_name"] = plans_name
    plans["configurations"][configuration]["architecture"]["arch_kwargs"]["features_per_stage"] = \
        list(features_per_stage)
    return plans


# -------------------------------------------------------------------------------------------------- training logs
def training_logs(fold: Path) -> List[Path]:
    """nnU-Net's training_log_*.txt of a fold folder, oldest first (one per run)."""
    return sorted(fold.glob("training_log_*.txt"), key=lambda f: f.stat().st_mtime)


def epochs_in(log_text: str) -> List[int]:
    """The epochs a training log says it trained ("...: Epoch N" lines)."""
    return [int(line.split("Epoch ")[1]) for line in log_text.splitlines()
            if ": Epoch " in line and line.split("Epoch ")[1].strip().isdigit()]


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# ------------------------------------------------------------------------------------------ users' short trainers
def write_user_trainers(folder: Path, source: str, module: str = "user_trainers") -> Path:
    """A user's trainer module `module`.py in `folder` (created); returns the folder, for nnUNet_extTrainer."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    return folder


class ShortRun(ShortSchedule):
    """The library's ShortSchedule with a test's defaults and switches: `schedule_epochs` epochs ($TEST_EPOCHS
    overrides it) of `schedule_iterations` training and `schedule_val_iterations` validation batches.
    mirroring = False: no mirroring, in training nor at test time (nnU-Net's nnUNetTrainerNoMirroring);
    final_validation = False (or $TEST_SKIP_FINAL_VALIDATION=1): no final validation;
    nnunet_save_every: nnU-Net's own checkpoint_latest.pth interval (`save_every`; nnU-Net's: 50)."""
    schedule_epochs, schedule_iterations, schedule_val_iterations = 1, 2, 1
    mirroring = True
    final_validation = True
    nnunet_save_every: Optional[int] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if os.environ.get("TEST_EPOCHS"):
            self.num_epochs = int(os.environ["TEST_EPOCHS"])
        if self.nnunet_save_every is not None:
            self.save_every = self.nnunet_save_every

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.mirroring:
            mirror_axes, self.inference_allowed_mirroring_axes = None, None
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.final_validation and os.environ.get("TEST_SKIP_FINAL_VALIDATION") != "1":
            super().perform_actual_validation(save_probabilities)


class StopsAfterEpoch:
    """$TEST_STOP_AFTER_EPOCH=N: the training process is killed (SIGKILL, as a crash or a cluster's scheduler would
    stop it: no clean-up) right after epoch N has ended, its checkpoints written."""

    def on_epoch_end(self):
        super().on_epoch_end()  # (counts the epoch)
        stop = os.environ.get("TEST_STOP_AFTER_EPOCH")
        if stop is not None and self.current_epoch == int(stop) + 1:
            os.kill(os.getpid(), signal.SIGKILL)


class EveryModalityValidated:
    """For trainers of ours: every validation batch holds one case of each modality in turn (the first validation case
    of each), so that every epoch has a pseudo-Dice for every modality (equal-share sampling leaves a modality out of
    a small batch now and then)."""

    def modality_data_loader(self, dataset, patch_size, final_patch_size, transforms, training: bool):
        loader = super().modality_data_loader(dataset, patch_size, final_patch_size, transforms, training)
        if not training:
            loader.__class__ = _every_modality_loader(type(loader))
        return loader


def _every_modality_loader(base: type) -> type:
    class EveryModalityLoader(base):
        def get_indices(self):
            firsts = [self.cases_of[m][0] for m in self.cycle]
            return [firsts[i % len(firsts)] for i in range(self.batch_size)]

    return EveryModalityLoader


# -------------------------------------------------------------------------------------------------------- misc
def randomise_cin_rows(network: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
    """Give every CIN row of `network` its own values (weight around 1, bias around 0), so that what the network
    computes depends on the modality it is conditioned on."""
    from nnunet_cin.cin import cin_layers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in cin_layers(network):
            layer.weight.copy_(1 + scale * torch.randn(layer.weight.shape, generator=g))
            layer.bias.copy_(scale * torch.randn(layer.bias.shape, generator=g))


def softmax_of_mean_logits(*probabilities: np.ndarray) -> np.ndarray:
    """nnU-Net's fold ensemble (the mean of the folds' logits, then softmax), computed from the folds' softmax
    probabilities: log p = logits - logsumexp(logits), and a per-voxel constant cancels in the softmax."""
    logs = np.mean([np.log(np.maximum(p.astype(np.float64), 1e-300)) for p in probabilities], 0)
    e = np.exp(logs - logs.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


# ------------------------------------------------------------------------------------------------- the tiny model
TINY_MODEL_ID, TINY_MODEL_NAME = 987, "TinyCIN"
TINY_MODEL_DATASET = f"Dataset{TINY_MODEL_ID}_{TINY_MODEL_NAME}"
TINY_MODEL_TRAINER = "nnUNetTrainerCINTinyTest"
TINY_MODEL_TRAINER_SOURCE = '''
import torch
from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN


class nnUNetTrainerCINTinyTest(nnUNetTrainerCIN):
    """A user's short schedule: 1 epoch of 3 iterations, then nnU-Net's final validation (add-modality keeps it)."""
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 1

    def initialize(self):
        super().initialize()
        # CT's and MR's rows made different on purpose (seeded): 3 iterations from nnU-Net's 1 / 0 would leave them
        # nearly equal, and the tests that predict a case under each modality need them to compute different things
        # (randomise_cin_rows's body, repeated: this source runs where tests/ is not importable)
        from nnunet_cin.cin import cin_layers
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for layer in cin_layers(self.network):
                layer.weight.copy_(1 + 0.5 * torch.randn(layer.weight.shape, generator=g))
                layer.bias.copy_(0.5 * torch.randn(layer.bias.shape, generator=g))
'''


def tiny_model_environment(root: Path) -> dict:
    """The environment of nnU-Net's commands on a copy of the tiny model under `root`."""
    return dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
                nnUNet_results=str(root / "results"), nnUNet_compile="false", nnUNet_n_proc_DA="0",
                nnUNet_def_n_proc="1", OMP_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE",
                nnUNet_cin_fingerprint_samples="1e5", nnUNet_cin_seed="0",
                nnUNet_extTrainer=os.pathsep.join([str(root / "trainers"), OUR_TRAINERS]))


def train_tiny_model(root: Path) -> None:
    """A user's run, by the real commands: nnUNetv2_plan_and_preprocess_cin, a narrower network than planned (a
    user's plans edit, same preprocessed data: fast on 2 CPU cores), nnUNetv2_train of a user trainer in its own
    nnUNet_extTrainer folder; on 3 CT + 3 MR generated hearts of 24^3 (seed 5) and one test case per modality."""
    for k in ("raw", "preprocessed", "results", "trainers"):
        (root / k).mkdir(parents=True, exist_ok=True)
    (root / "trainers" / f"{TINY_MODEL_TRAINER}.py").write_text(TINY_MODEL_TRAINER_SOURCE)
    env = tiny_model_environment(root)
    write_nnunet_dataset(root / "raw", TINY_MODEL_ID, TINY_MODEL_NAME, {"CT": 3, "MR": 3}, shape=(24, 24, 24), seed=5,
                         test_cases_per_modality=1)
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA): 0 is not allowed there
    run(["nnUNetv2_plan_and_preprocess_cin", "-d", TINY_MODEL_ID, "-c", "3d_fullres", "-np", "1", "-npfp", "1"], env,
        {"nnUNet_n_proc_DA": "1"})
    import json
    plans_file = root / "preprocessed" / TINY_MODEL_DATASET / "nnUNetPlansCIN.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 8, 16]
    plans_file.write_text(json.dumps(plans, indent=2))
    run(["nnUNetv2_train", TINY_MODEL_ID, "3d_fullres", "0", "-tr", TINY_MODEL_TRAINER, "-p", "nnUNetPlansCIN",
         "-device", "cpu"], env)


def copy_of_tiny_model(pristine: Path, root: Path) -> dict:
    """A module's own copy of the tiny model (its raw, preprocessed and results folders, its trainer): what a module
    changes stays there. Returns its environment, its root and its model folder."""
    import shutil
    shutil.copytree(pristine, root, dirs_exist_ok=True)
    return {"root": root, "env": tiny_model_environment(root), "raw": root / "raw" / TINY_MODEL_DATASET,
            "folder": root / "results" / TINY_MODEL_DATASET / f"{TINY_MODEL_TRAINER}__nnUNetPlansCIN__3d_fullres"}


# ------------------------------------------------------------------------------------------------------ processes
def descendants(pid: int) -> List[int]:
    """Every process below `pid` (from /proc), children first."""
    children = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap an orphan)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def left_running(pids: Iterable[int], seconds: float) -> List[int]:
    """The processes of `pids` still running after up to `seconds`."""
    import time
    pids = list(pids)
    deadline = time.time() + seconds
    while any(running(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    return [p for p in pids if running(p)]


RUN_MARKER = "NNUNET_CIN_TEST_RUN"


def marked_env(env: dict) -> dict:
    """`env` plus a marker unique to one run: every process the run starts inherits it (forked, spawned, exec'd),
    and keeps it when its parent dies, so `marked_running` finds what a run left behind, whoever its parent now is."""
    import uuid
    return {**env, RUN_MARKER: uuid.uuid4().hex}


def marked_running(env: dict, seconds: float = 0.0) -> List[int]:
    """The running processes that carry `env`'s run marker (after waiting up to `seconds` for them to end)."""
    import time
    needle = f"{RUN_MARKER}={env[RUN_MARKER]}".encode()

    def scan():
        found = []
        for d in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if needle in f.read().split(b"\0") and running(int(d)):
                        found.append(int(d))
            except OSError:
                continue
        return found
    deadline = time.time() + seconds
    while scan() and time.time() < deadline:
        time.sleep(0.2)
    return scan()
