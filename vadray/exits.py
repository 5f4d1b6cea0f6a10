"""Exit statuses shared by every job, and how a job that is told to stop ends."""
from __future__ import annotations

import signal
import threading

EXIT_OK = 0
EXIT_FAILED = 1    # the job ran and could not produce its result (a training run that diverged)
EXIT_USAGE = 2     # bad arguments or unreachable input, before any work
EXIT_PARTIAL = 3   # the job finished but some inputs failed (rows in errors/)
EXIT_INTERRUPTED = 130   # Ctrl-C, as shells report SIGINT
EXIT_TERMINATED = 143    # SIGTERM (`ray job stop`, `timeout`, systemd, Kubernetes), as shells report it


class UsageError(ValueError):
    """A wrong configuration or unreachable input: reported at once, exit status 2."""


class JobFailed(RuntimeError):
    """The job ran but cannot produce a usable result: one line saying why, exit status 1."""


_sigterm_received = threading.Event()


def stopped_by_sigterm() -> bool:
    return _sigterm_received.is_set()


def answer_sigterm_as_ctrl_c() -> None:
    """Once Ray runs in this process, SIGTERM meets Ray's fatal-signal handler: a stack dump and
    an abort (exit 134), with no word on what was kept. Answer it as Ctrl-C is answered now —
    by whatever handles SIGINT at that moment (Ray Train's handler aborts a fit cleanly) — so a
    stopped job keeps its finished work and says how to go on. Main thread only (Python's rule)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def as_ctrl_c(signum, frame):
        _sigterm_received.set()
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:   # Ctrl-C ignored (a job started in the background by a script): stop all the same
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, as_ctrl_c)
