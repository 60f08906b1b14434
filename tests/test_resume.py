"""nnunet_cin.training.resume: when our trainers write checkpoint_latest.pth (the trainer-level checks, an
interrupted `nnUNetv2_train` continued with `--c`, are in test_trainer.py)."""
import pytest

from nnunet_cin.training.resume import LatestCheckpointSchedule, default_every_epochs


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
