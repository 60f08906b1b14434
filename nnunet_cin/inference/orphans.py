"""No process of a prediction outlives it: worker processes end when their parent dies, and our commands that run
other commands pass SIGTERM/SIGINT on to them.

nnU-Net's prediction runs preprocessing workers and an export pool (spawned processes). Killed with SIGKILL (a
`timeout -s KILL`, a scheduler, the OOM killer), the main process has no chance to end them: they stay behind with
parent 1, blocked on queues nobody will ever fill. `end_with_parent()` is called where such a worker first imports
our code (nnunet_cin.inference.preprocessing and .outputs, which every worker unpickles with the configuration or
plans manager): on Linux the kernel sends it SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere a
daemon thread polls the parent's pid once a second. It does nothing in a process that is not a multiprocessing
child.

`run_forwarding_signals` runs a command as subprocess.run does, passing SIGTERM and SIGINT on to it and waiting for it
(nnunet-cin demo, compare and add-modality run nnU-Net's and our commands this way).
"""
import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Optional

PR_SET_PDEATHSIG = 1
_done = False


def _set_parent_death_signal(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int):
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(1.0)


def _arm(parent: int) -> None:
    """This process ends when `parent` does: the kernel's parent-death signal, else a watchdog thread."""
    if _set_parent_death_signal(signal.SIGKILL):
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)
        return
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="end-with-parent").start()


def end_with_parent() -> None:
    """In a multiprocessing child (spawned: also while it is being prepared, when it imports the parent's main module
    and parent_process() is not yet known): end this process when its parent dies. Once per process."""
    global _done
    parent = multiprocessing.parent_process()
    preparing = getattr(multiprocessing.current_process(), "_inheriting", False)
    if _done or (parent is None and not preparing):
        return
    _done = True
    _arm(parent.pid if parent is not None and parent.pid else os.getppid())


_forking_parent: Optional[int] = None  # set while forked children must end with this process
_fork_hook_registered = False


def _before_fork():
    global _fork_parent_pid
    _fork_parent_pid = os.getpid()


_fork_parent_pid = 0


def _after_fork_in_child():
    global _forking_parent
    if _forking_parent is not None:
        _forking_parent = None  # the child's own forks are its business
        _arm(_fork_parent_pid)


def _register_fork_hook() -> bool:
    global _fork_hook_registered
    if not hasattr(os, "register_at_fork"):
        return False
    if not _fork_hook_registered:
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _fork_hook_registered = True
    return True


@contextmanager
def forked_children_end_with_this_process():
    """Inside: processes forked from this one (nnU-Net's Manager server and file-listing pool, which torch's and
    Python's default fork context start) end when it dies. Spawned workers arm themselves (`end_with_parent`)."""
    global _forking_parent
    if not _register_fork_hook():
        yield
        return
    previous, _forking_parent = _forking_parent, os.getpid()
    try:
        yield
    finally:
        _forking_parent = previous


def forks_end_with_this_process_from_now() -> None:
    """For a process whose whole life is one command (the prediction commands): every process forked from it, for
    the rest of its life, ends when it dies. The context above ends with its block, and a SIGTERM's unwinding
    still forks after it (a Pool refilling itself while it is shut down, at the interpreter's exit)."""
    global _forking_parent
    if _register_fork_hook():
        _forking_parent = os.getpid()


class _Forwarder:
    def __init__(self):
        self.proc: Optional[subprocess.Popen] = None
        self.received: list = []

    def __call__(self, signum, frame):
        self.received.append(signum)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def started(self, proc: subprocess.Popen) -> subprocess.Popen:
        """Register the command just started (a signal received before it started is passed on now)."""
        self.proc = proc
        if self.received and proc.poll() is None:
            proc.send_signal(self.received[0])
        return proc


@contextmanager
def signals_passed_on():
    """Inside: SIGTERM and SIGINT are passed on to the command registered with `.started(proc)`; on leaving, this
    process ends as the first signal asked (SIGTERM: exit code 128 + 15; SIGINT: KeyboardInterrupt), after the
    block has waited for the command. Outside the main thread: no handlers (Python allows them there only)."""
    forwarder = _Forwarder()
    if threading.current_thread() is not threading.main_thread():
        yield forwarder
        return
    previous = {s: signal.signal(s, forwarder) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield forwarder
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if forwarder.received:
        if forwarder.received[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + forwarder.received[0])


def run_forwarding_signals(argv, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(argv, **kwargs), except that SIGTERM and SIGINT received meanwhile are passed on to the command,
    which is waited for; then this process ends as the signal asks (see `signals_passed_on`)."""
    with signals_passed_on() as forwarder:
        proc = forwarder.started(subprocess.Popen(argv, **kwargs))
        stdout, stderr = proc.communicate()
    result = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    if check:
        result.check_returncode()
    return result
