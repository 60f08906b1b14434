import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from nnunet_cin.environment import cpu_defaults

# Tests run on CPU with few threads; nnU-Net's multiprocessing defaults would oversubscribe 2 cores (busy-waiting
# OpenMP threads turn a 0.15 s CPU step into seconds; 8 export workers, each importing torch, a second into minutes)
os.environ.update(cpu_defaults(os.environ, processes=2, augmentation_workers=0, threads=2))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """Fresh nnUNet_raw / nnUNet_preprocessed / nnUNet_results folders, and our trainers on nnUNet_extTrainer."""
    import nnunet_cin.trainers

    paths = SimpleNamespace(raw=tmp_path / "raw", preprocessed=tmp_path / "preprocessed",
                            results=tmp_path / "results")
    for name, p in (("nnUNet_raw", paths.raw), ("nnUNet_preprocessed", paths.preprocessed),
                    ("nnUNet_results", paths.results)):
        p.mkdir()
        monkeypatch.setenv(name, str(p))
    monkeypatch.setenv("nnUNet_extTrainer", nnunet_cin.trainers.__path__[0])
    return paths


@pytest.fixture
def one_torch_thread():
    """One torch thread in this process: busy-waiting OpenMP threads are pathologically slow on a loaded machine.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `name`, made by build(folder) once for the whole test run: also when pytest-xdist runs the suite in
    several worker processes (they share the folder above their own temporary folders; a lock makes the others wait
    for the first). The builder must leave nothing a later reader could change; readers must not write to it."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def planned_hearts(tmp_path_factory):
    """Dataset999_SyntheticHeart: 4 CT + 4 MR generated hearts of 24^3, planned and preprocessed once per session by
    nnU-Net's own nnUNetv2_plan_and_preprocess (2d, 3d_fullres), plus "nnUNetPlansTiny": its plans with a narrower
    U-Net (same preprocessed data), fast on CPU, and splits_final.json as our trainers write it (modality-stratified,
    seeded): the trainer tests only read it. Returns nnunet_helpers.plan_synthetic_dataset's folders; results: unused
    (each module has its own)."""
    import json

    from nnunet_helpers import narrower_plans, nnunet_folders, plan_synthetic_dataset

    from nnunet_cin.training.splits import stratified_crossval_split

    def build(root):
        paths = plan_synthetic_dataset(root, 999, {"CT": 4, "MR": 4}, (24, 24, 24),
                                       configurations=("2d", "3d_fullres"))
        folder = paths.preprocessed / paths.folder_name
        plans = narrower_plans(json.loads((folder / "nnUNetPlans.json").read_text()), "nnUNetPlansTiny")
        (folder / "nnUNetPlansTiny.json").write_text(json.dumps(plans, indent=2))
        cases = [f"{m}_{i:04d}" for m in ("ct", "mr") for i in range(4)]
        splits = stratified_crossval_split(cases, {c: c[:2].upper() for c in cases})
        (folder / "splits_final.json").write_text(json.dumps(splits, indent=4))

    paths = nnunet_folders(built_once(tmp_path_factory, "hearts", build))
    paths.dataset_id, paths.folder_name = 999, "Dataset999_SyntheticHeart"
    return paths


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """One tiny conditional model trained by the real commands for the whole run (nnunet_helpers.train_tiny_model);
    modules take their own copy (nnunet_helpers.copy_of_tiny_model) and never change this one."""
    from nnunet_helpers import train_tiny_model
    return built_once(tmp_path_factory, "tiny_model", train_tiny_model)


def pytest_configure(config):
    # CI runs every test; a developer can leave the slowest end-to-end ones out: python -m pytest -m "not slow" tests
    config.addinivalue_line("markers", "slow: a slow end-to-end test (real nnU-Net commands); deselect with "
                                       "-m \"not slow\"")


# The test files that take longest (measured with --durations), started first: pytest-xdist hands whole files to its
# workers in collection order (pytest.ini turns off its own order, by number of tests), and a long file started last
# keeps one worker busy while the other idles.
LONGEST_FIRST = ["test_compare_arms_end_to_end.py", "test_demo.py", "test_compare_seeds_end_to_end.py",
                 "test_predict.py", "test_trainer.py", "test_planning.py", "test_add_modality.py",
                 "test_cvit_trainer.py", "test_convert_pretrained.py", "test_swin_trainer.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file is kept
