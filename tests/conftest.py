import os
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


@pytest.fixture(scope="session")
def planned_hearts(tmp_path_factory):
    """Dataset999_SyntheticHeart: 4 CT + 4 MR generated hearts of 24^3, planned and preprocessed once per session by
    nnU-Net's own nnUNetv2_plan_and_preprocess (2d, 3d_fullres), plus "nnUNetPlansTiny": its plans with a narrower
    U-Net (same preprocessed data), fast on CPU. Shared by the trainer tests: they read it, and only
    splits_final.json gets written (by the first trainer that needs it; the same seeded split every time).
    Returns nnunet_helpers.plan_synthetic_dataset's folders; results: unused (each module has its own)."""
    import json

    from nnunet_helpers import narrower_plans, plan_synthetic_dataset

    paths = plan_synthetic_dataset(tmp_path_factory.mktemp("hearts"), 999, {"CT": 4, "MR": 4}, (24, 24, 24),
                                   configurations=("2d", "3d_fullres"))
    folder = paths.preprocessed / paths.folder_name
    plans = narrower_plans(json.loads((folder / "nnUNetPlans.json").read_text()), "nnUNetPlansTiny")
    (folder / "nnUNetPlansTiny.json").write_text(json.dumps(plans, indent=2))
    return paths


def pytest_configure(config):
    # CI runs every test; a developer can leave the slowest end-to-end ones out: python -m pytest -m "not slow" tests
    config.addinivalue_line("markers", "slow: a slow end-to-end test (real nnU-Net commands); deselect with "
                                       "-m \"not slow\"")
