"""SIGTERM ends a prediction run like Ctrl-C, with its workers: `sigterm_ends_run`, the one context the prediction
commands run in (nnunet_cin.inference.command).

Why a module of its own: a SIGTERM (kill, timeout, a job scheduler) would end the main process alone, and nnU-Net's
preprocessing and export workers would live on; handling it right at any moment takes several cooperating pieces
that are easier to reason about together than spread over the predictor: the handler (`_exit_on_sigterm`: ends the
daemonic preprocessing workers, then unwinds with SystemExit(128 + SIGTERM)), os.fork's hooks (a forked child keeps
SIGTERM's default; a SIGTERM that arrives inside the hooks is handled once the fork is done), an excepthook that hides
the resource sharer's connection errors during the unwinding (`_QuietResourceSharer`). SIGKILL leaves no chance to do
any of this: workers end with their parent instead (nnunet_cin.inference.orphans).
"""
import multiprocessing
import os
import signal
import sys
import threading
from contextlib import contextmanager



_sigterm_received = False  # a SIGTERM is ending the current run
_forking = False  # inside os.fork's hooks (below)
_sigterm_while_forking = False


def _exit_on_sigterm(signum, frame):
    global _sigterm_received, _sigterm_while_forking
    if _forking:
        # inside os.fork's hooks, where Python prints an exception and drops it (the run would go on): handled again
        # once the fork is done (_unblock_sigterm)
        _sigterm_while_forking = True
        return
    if _sigterm_received:  # repeated: a second SystemExit would interrupt the unwinding (its cleanup) halfway
        return
    _sigterm_received = True
    # multiprocessing's resource-sharer thread hands file descriptors (shared tensors) to the export workers; one that
    # Pool.terminate ends mid-handshake makes it print a ConnectionResetError traceback, which Python hides only once
    # the interpreter is exiting (multiprocessing.util.is_exiting). The unwinding is the exit: hide it from now on.
    if not isinstance(sys.excepthook, _QuietResourceSharer):
        sys.excepthook = _QuietResourceSharer(sys.excepthook)
    # nnU-Net's daemonic preprocessing workers first: left for Python's exit, they would print a traceback each when
    # the Manager that holds their queues shuts down during the unwinding. Not the export pool's workers: an idle one
    # waits for work holding the pool's queue lock, and killed with it, Pool.terminate (the unwinding's) would wait
    # for that lock forever; Pool.terminate ends them itself.
    for child in multiprocessing.active_children():
        if child.daemon and "PoolWorker" not in child.name:
            child.terminate()
    raise SystemExit(128 + signum)


class _QuietResourceSharer:
    """sys.excepthook that drops the connection errors of multiprocessing's resource-sharer thread (a peer that
    vanished while it was handed a file descriptor) and passes everything else on."""

    def __init__(self, hook):
        self.hook = hook

    def __call__(self, exc_type, exc, tb):
        in_sharer = tb is not None and tb.tb_frame.f_globals.get("__name__") == "multiprocessing.resource_sharer"
        if not (in_sharer and issubclass(exc_type, (ConnectionError, EOFError))):
            self.hook(exc_type, exc, tb)


# Forked children (nnU-Net's file-listing pool, its Manager) must keep SIGTERM's default: multiprocessing ends them with
# SIGTERM and waits. A Python handler in them would lose a SIGTERM that arrives before the child has set up (Python
# drops signals pending at fork), and Pool.terminate would wait forever: SIGTERM stays blocked across the fork, and
# the child unblocks it only after restoring the default.
def _block_sigterm():
    global _forking
    if signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
        _forking = True
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _unblock_sigterm():
    global _forking, _sigterm_while_forking
    if signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if _sigterm_while_forking:
            _sigterm_while_forking = False
            # again, a moment later, once the main thread has left the fork's hooks: a real signal to the main thread
            # (interrupt_main only sets Python's flag, which waits until a blocking call there returns, e.g. a 60 s
            # sleep; a signal interrupts it)
            threading.Timer(0.01, signal.pthread_kill, (threading.main_thread().ident, signal.SIGTERM)).start()
        # last (no point where a handler runs comes after it here), and this hook is the last one: registered when
        # the first run starts, after the imported modules have registered theirs
        _forking = False


def _default_sigterm_in_child():
    global _forking
    handler = signal.getsignal(signal.SIGTERM)
    # also after the run's SIGTERM, when the parent ignores further ones: a child forked then must still end on the
    # SIGTERM its Pool's cleanup sends it
    if handler is _exit_on_sigterm or (_sigterm_received and handler == signal.SIG_IGN):
        _forking = False
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


_fork_hooks_registered = False


@contextmanager
def sigterm_ends_run():
    """SIGTERM (kill, timeout, a job scheduler) would end this process alone, and nnU-Net's preprocessing and export
    workers would live on. Here it ends them, then unwinds like Ctrl-C (SystemExit): nnU-Net's export pool and
    Manager are shut down and unfinished outputs removed."""
    global _fork_hooks_registered
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return
    if not _fork_hooks_registered:
        os.register_at_fork(before=_block_sigterm, after_in_parent=_unblock_sigterm,
                            after_in_child=_default_sigterm_in_child)
        _fork_hooks_registered = True
    global _sigterm_received
    _sigterm_received = False
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        # after a SIGTERM the process is on its way out: a repeated one would end it before Python's exit has shut
        # down the Manager and the workers (and as killed by a signal, not with 128 + SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_IGN if _sigterm_received else previous)
