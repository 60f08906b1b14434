"""nnunet_cin.training.resume: when our trainers write checkpoint_latest.pth, and which checkpoint --c loads when
nnU-Net's choice cannot be read (the trainer-level checks, an interrupted `nnUNetv2_train` continued with `--c` and a
truncated checkpoint_latest.pth, are in test_trainer.py)."""
import os

import pytest
import torch

from nnunet_cin.training.resume import (LatestCheckpointSchedule, UnreadableCheckpoint, checkpoint_to_continue,
                                        default_every_epochs, read_checkpoint)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def writes(schedule, clock, minutes_per_epoch, epochs):
    """The epochs after which checkpoint_latest.pth is written."""
    out = []
    for epoch in range(epochs):
        clock.now += 60 * minutes_per_epoch
        if schedule.epoch_ended():
            schedule.written()
            out.append(epoch)
    return out


@pytest.mark.parametrize("num_epochs, every", [(1, 1), (3, 1), (5, 1), (20, 2), (30, 3), (50, 5), (1000, 100)])
def test_a_tenth_of_the_schedule(num_epochs, every):
    assert default_every_epochs(num_epochs) == every


def test_every_n_epochs_or_t_minutes_whichever_comes_first():
    clock = Clock()
    fast = LatestCheckpointSchedule(every_epochs=3, every_minutes=5, clock=clock)
    assert writes(fast, clock, minutes_per_epoch=0.5, epochs=10) == [2, 5, 8]  # epochs first
    clock = Clock()
    slow = LatestCheckpointSchedule(every_epochs=50, every_minutes=5, clock=clock)
    assert writes(slow, clock, minutes_per_epoch=2, epochs=10) == [2, 5, 8]  # 6 minutes > 5: time first
    clock = Clock()
    no_time = LatestCheckpointSchedule(every_epochs=4, every_minutes=None, clock=clock)
    assert writes(no_time, clock, minutes_per_epoch=60, epochs=9) == [3, 7]


def test_a_write_resets_both_counters():
    clock = Clock()
    schedule = LatestCheckpointSchedule(every_epochs=3, every_minutes=5, clock=clock)
    clock.now = 4 * 60
    assert not schedule.epoch_ended()
    schedule.written()  # e.g. nnU-Net's own write every save_every epochs
    clock.now = 8 * 60  # 4 minutes since that write, 2 epochs
    assert not schedule.epoch_ended()
    clock.now = 9.5 * 60
    assert schedule.epoch_ended()


def test_at_least_one_epoch():
    with pytest.raises(ValueError, match="1 or more"):
        LatestCheckpointSchedule(every_epochs=0, every_minutes=5)


# ------------------------------------------------------------------------------------------ --c: which checkpoint
def write(folder, name, epoch):
    torch.save({"network_weights": {"w": torch.full((100,), float(epoch))}, "current_epoch": epoch}, folder / name)


def cut_in_half(path):
    os.truncate(path, path.stat().st_size // 2)


def test_a_readable_choice_is_kept(tmp_path):
    write(tmp_path, "checkpoint_latest.pth", 4)
    write(tmp_path, "checkpoint_best.pth", 6)  # newer, but nnU-Net's --c prefers checkpoint_latest.pth: kept
    path, saved, skipped = checkpoint_to_continue(str(tmp_path / "checkpoint_latest.pth"))
    assert path == str(tmp_path / "checkpoint_latest.pth") and saved["current_epoch"] == 4 and skipped == []


def test_the_next_readable_of_nnunets_order(tmp_path):
    for name, epoch in (("checkpoint_final.pth", 9), ("checkpoint_latest.pth", 8), ("checkpoint_best.pth", 7)):
        write(tmp_path, name, epoch)
    cut_in_half(tmp_path / "checkpoint_final.pth")
    path, saved, skipped = checkpoint_to_continue(str(tmp_path / "checkpoint_final.pth"))
    assert path.endswith("checkpoint_latest.pth") and saved["current_epoch"] == 8
    assert len(skipped) == 1 and "checkpoint_final.pth cannot be read" in skipped[0] and "cut short" in skipped[0]

    cut_in_half(tmp_path / "checkpoint_latest.pth")
    path, saved, skipped = checkpoint_to_continue(str(tmp_path / "checkpoint_final.pth"))
    assert path.endswith("checkpoint_best.pth") and saved["current_epoch"] == 7 and len(skipped) == 2

    cut_in_half(tmp_path / "checkpoint_best.pth")
    with pytest.raises(UnreadableCheckpoint, match="no checkpoint it can read") as e:
        checkpoint_to_continue(str(tmp_path / "checkpoint_final.pth"))
    assert all(f"checkpoint_{n}.pth cannot be read" in str(e.value) for n in ("final", "latest", "best"))


def test_not_a_checkpoint_and_an_empty_file(tmp_path):
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(UnreadableCheckpoint, match="not an nnU-Net checkpoint"):
        read_checkpoint(str(tmp_path / "other.pth"))
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(UnreadableCheckpoint, match="empty.pth cannot be read"):
        read_checkpoint(str(tmp_path / "empty.pth"))
    write(tmp_path, "legacy.pth", 3)
    torch.save(torch.load(tmp_path / "legacy.pth"), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert read_checkpoint(str(tmp_path / "legacy.pth"))["current_epoch"] == 3  # cannot be memory-mapped, still read
