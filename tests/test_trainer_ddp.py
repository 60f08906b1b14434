"""nnUNetTrainerCIN under DDP: two spawned processes in a gloo process group on the CPU, each building and training
the trainer (1 epoch) on conftest's planned hearts. What DDP changes for our trainer: nnU-Net splits the global batch
(and its foreground oversampling) over the ranks; every rank draws its own cases (a seeded run: its own stream), and
the ranks' samples together keep the configured modality shares; the per-modality pseudo-Dice counts are gathered
from every rank before the Dice is computed.

The seam (test only; nnU-Net and our trainer unchanged): nnU-Net 2.8.1's DDP path assumes CUDA (its __init__ moves the
trainer to cuda:<rank>, its initialize wraps the network in DDP(device_ids=[rank]), which torch refuses for a CPU
module). CPUDistributedCIN keeps the CPU and lets nnU-Net's initialize run as in one process, then does what that
initialize does under DDP: the per-rank batch size and oversampling, the loss for DDP, the DDP wrap (no device id).
"""
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN
from nnunet_cin.training.seeding import rng_state, seed_everything

WORLD_SIZE = 2
GLOBAL_BATCH = 4  # per rank 2 + 2
SEED = 7
DRAWS = 300  # index draws per rank after training: 2 * 300 global batches of 4 for the share estimate
# nnU-Net forces foreground into the samples of a global batch from index round(4 * (1 - 0.33)) = 3 on: rank 0 holds
# samples 0, 1 (none forced), rank 1 samples 2, 3 (one of two).
EXPECTED = {0: {"batch_size": 2, "oversample": 0.0}, 1: {"batch_size": 2, "oversample": 0.5}}
MR_SHARE = 0.75


def modality_of(case: str) -> str:
    return {"ct_": "CT", "mr_": "MR"}[case[:3]]


class CPUDistributedCIN(nnUNetTrainerCIN):
    """nnUNetTrainerCIN on the CPU in a gloo process group (see the module docstring): 1 epoch of 2 iterations and 2
    validation batches, MR sampled three times as often as CT, no final validation. Records what the test checks."""
    modality_shares = {"CT": 1, "MR": 3}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cpu')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.device, self.grad_scaler = torch.device("cpu"), None  # (nnU-Net chose cuda:<rank> and its scaler)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1, 2, 2
        self.training_batches, self.validation_outputs, self.states_saved = [], None, {}

    def initialize(self):
        assert self.is_ddp and not self.was_initialized
        self.is_ddp = False
        try:
            super().initialize()
        finally:
            self.is_ddp = True
        self._set_batch_size_and_oversample()  # nnU-Net's, now with the ranks (the one-process call left them alone)
        self.loss = self._build_loss()
        self.network = DistributedDataParallel(self.network)

    def train_step(self, batch: dict) -> dict:
        self.training_batches.append([str(k) for k in batch["keys"]])
        return super().train_step(batch)

    def on_validation_epoch_end(self, val_outputs):
        self.validation_outputs = val_outputs
        super().on_validation_epoch_end(val_outputs)

    def perform_actual_validation(self, save_probabilities: bool = False):
        pass

    def save_checkpoint(self, filename: str) -> None:
        self.states_saved[os.path.basename(filename)] = comparable(rng_state())
        super().save_checkpoint(filename)


def comparable(state: dict) -> tuple:
    """A generator state (nnunet_cin.training.seeding.rng_state) as plain values that compare with ==."""
    return state["python"], state["numpy"][1].numpy().tobytes(), state["torch"].numpy().tobytes()


def _rank(rank: int, port: int, preprocessed_folder: str, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        with open(os.path.join(preprocessed_folder, "nnUNetPlansTiny.json")) as f:
            plans = json.load(f)
        with open(os.path.join(preprocessed_folder, "dataset.json")) as f:
            dataset_json = json.load(f)
        plans["configurations"]["3d_fullres"]["batch_size"] = GLOBAL_BATCH
        plans["continue_training"] = False  # (nnUNetv2_train's key)
        trainer = CPUDistributedCIN(plans, "3d_fullres", 0, dataset_json)
        trainer.run_training()
        loader = trainer.dataloader_train.data_loader  # (nnUNet_n_proc_DA=0: nnU-Net's single-threaded augmenter)
        counts = {k: np.sum([o[f"{k}_per_modality"] for o in trainer.validation_outputs], 0)
                  for k in ("tp_hard", "fp_hard", "fn_hard")}
        # --c on every rank (as nnUNetv2_train --c under torchrun): a new trainer loads checkpoint_final.pth (written by
        # rank 0) and continues this rank's random streams
        dist.barrier()
        plans["continue_training"] = True
        continued = CPUDistributedCIN(plans, "3d_fullres", 0, dataset_json)
        continued.load_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
        seed_everything(1234 + rank)  # whatever the streams were: the checkpoint's states replace them
        if continued._continue_random_streams is not None:  # what on_train_start does
            continued._continue_random_streams()
        restored = comparable(rng_state())
        queue.put((rank, {
            "batch_size": trainer.batch_size, "oversample": trainer.oversample_foreground_percent,
            "loader": (loader.batch_size, loader.oversample_foreground_percent),
            "training_batches": trainer.training_batches,
            "draws": [[str(k) for k in loader.get_indices()] for _ in range(DRAWS)],
            "counts": counts, "saved_state": trainer.states_saved["checkpoint_final.pth"], "restored_state": restored,
            "logged": {m: float(trainer.logger.get_value(f"mean_fg_dice/{m}", step=-1)) for m in ("CT", "MR")},
            "weights": {k: v.numpy().copy() for k, v in trainer.network.module.state_dict().items()}}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pseudo_dice(tp, fp, fn) -> float:
    """Mean foreground pseudo-Dice from counts (nnU-Net's formula; classes without any voxel left out)."""
    tp, fp, fn = (np.asarray(a, dtype=float) for a in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return float(np.mean((2 * tp / np.where(denominator > 0, denominator, 1))[denominator > 0]))


@pytest.fixture(scope="module")
def ranks(planned_hearts, tmp_path_factory):
    """Both ranks' records (one seeded DDP run: nnUNet_cin_seed=7)."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "preprocessed").mkdir()
    (root / "results").mkdir()
    (root / "preprocessed" / planned_hearts.folder_name).symlink_to(
        planned_hearts.preprocessed / planned_hearts.folder_name)
    saved = {k: os.environ.get(k) for k in ("nnUNet_preprocessed", "nnUNet_results", "nnUNet_raw", "nnUNet_cin_seed")}
    # the spawned processes inherit this environment
    os.environ.update(nnUNet_preprocessed=str(root / "preprocessed"), nnUNet_results=str(root / "results"),
                      nnUNet_raw=str(planned_hearts.raw), nnUNet_cin_seed=str(SEED))
    try:
        context = mp.get_context("spawn")
        queue = context.Queue()
        port = _free_port()
        processes = [context.Process(target=_rank, args=(r, port, str(root / "preprocessed" /
                                                                     planned_hearts.folder_name), queue))
                     for r in range(WORLD_SIZE)]
        for p in processes:
            p.start()
        records = dict(queue.get(timeout=600) for _ in processes)
        for p in processes:
            p.join(timeout=120)
            assert p.exitcode == 0
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return records


def test_each_rank_gets_its_part_of_the_global_batch(ranks):
    for rank, expected in EXPECTED.items():
        record = ranks[rank]
        assert (record["batch_size"], record["oversample"]) == (expected["batch_size"], expected["oversample"])
        assert record["loader"] == (expected["batch_size"], expected["oversample"])  # what our data loader was given
        assert [len(b) for b in record["training_batches"]] == [expected["batch_size"]] * 2


def test_ranks_draw_their_own_cases_and_keep_the_global_shares(ranks):
    flat = {r: [k for batch in ranks[r]["draws"] for k in batch] for r in ranks}
    assert flat[0] != flat[1]  # a seeded run: every rank its own stream
    assert ranks[0]["training_batches"] != ranks[1]["training_batches"]
    global_batches = [a + b for a, b in zip(ranks[0]["draws"], ranks[1]["draws"])]
    assert all(len(b) == GLOBAL_BATCH for b in global_batches)
    samples = [modality_of(k) for b in global_batches for k in b]
    assert samples.count("MR") / len(samples) == pytest.approx(MR_SHARE, abs=0.05)  # 1200 samples: sd 0.0125


def test_gathered_pseudo_dice_counts_are_the_ranks_sum(ranks):
    """Every rank logs the per-modality pseudo-Dice of the counts of all ranks: what one process would compute from
    the sum of the ranks' counts."""
    local = [ranks[r]["counts"] for r in range(WORLD_SIZE)]
    assert any(not np.array_equal(local[0][k], local[1][k]) for k in local[0])  # (else the test could not tell)
    for m, name in enumerate(("CT", "MR")):
        summed = [sum(c[k][m] for c in local) for k in ("tp_hard", "fp_hard", "fn_hard")]
        expected = pseudo_dice(*summed)
        assert np.isfinite(expected)
        for r in range(WORLD_SIZE):
            assert ranks[r]["logged"][name] == pytest.approx(expected), (name, r)
    own = [[pseudo_dice(*(c[k][m] for k in ("tp_hard", "fp_hard", "fn_hard"))) for m in range(2)] for c in local]
    assert any(not np.isclose(own[r][m], ranks[r]["logged"][name]) for r in range(WORLD_SIZE)
               for m, name in enumerate(("CT", "MR")))  # a rank's own counts would give another value


def test_ranks_train_one_network(ranks):
    """DDP's all-reduce kept the ranks' weights (CIN rows included) identical through the training steps."""
    weights = [ranks[r]["weights"] for r in range(WORLD_SIZE)]
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        np.testing.assert_array_equal(weights[0][k], weights[1][k], err_msg=k)


def test_continue_restores_every_ranks_random_streams(ranks):
    """--c under DDP: each rank's generators continue from the states that rank had when the checkpoint was written
    (rank 0 writes the file; the ranks' states are gathered into it), not from rank 0's nor from fresh seeds."""
    assert ranks[0]["saved_state"] != ranks[1]["saved_state"]  # every rank its own streams
    for r in range(WORLD_SIZE):
        assert ranks[r]["restored_state"] == ranks[r]["saved_state"], r
