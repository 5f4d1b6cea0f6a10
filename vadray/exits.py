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
STOP_GRACE_S = 20.0   # after SIGTERM, a clean-up still running this long is cut short
_answering_sigterm = False   # set by the CLI: a library caller's process keeps its own SIGTERM


def stopped_by_sigterm() -> bool:
    return _sigterm_received.is_set()


def answer_sigterm_as_ctrl_c() -> None:
    """The CLI's: SIGTERM (`ray job stop`, `timeout`, systemd) ends the job as Ctrl-C does, by
    whatever handles SIGINT at that moment (Ray Train's handler aborts a fit cleanly), so a
    stopped job keeps its finished work and says how to go on. Once Ray runs in the process,
    SIGTERM would otherwise meet Ray's fatal-signal handler: a stack dump and an abort (exit
    134). `ray.init` installs that handler, so `ensure_ray` calls `keep_answering_sigterm` after it."""
    global _answering_sigterm
    _answering_sigterm = True
    _sigterm_received.clear()   # (a test calls the CLI many times in one process)
    keep_answering_sigterm()


def keep_answering_sigterm() -> None:
    if not _answering_sigterm or threading.current_thread() is not threading.main_thread():
        return   # (Python sets handlers from the main thread only)

    def as_ctrl_c(signum, frame):
        if _sigterm_received.is_set():   # `timeout` signals the process, then its group: once is enough
            return
        _sigterm_received.set()
        threading.Thread(target=_exit_if_still_running, daemon=True).start()
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:   # Ctrl-C ignored (a job started in the background by a script): stop all the same
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, as_ctrl_c)


def _exit_if_still_running() -> None:
    """A signal to the whole process group (`timeout`, systemd's default) stops a local Ray's own
    processes as well, and the clean-up then waits on them: Ray gives up after 60 s with exit
    1 and no word on what was kept. What is finished is on storage whole already (tables and
    markers are written whole, shards replaced on rerun), so end here instead. (Only where the
    main thread ran the handler: one blocked inside a Ray call when the signal came does not,
    and Ray ends the process after its 60 s.)"""
    import os
    import sys
    import time

    time.sleep(STOP_GRACE_S)
    sys.stderr.write(f"vadray: stopped (SIGTERM); the clean-up had not ended after {STOP_GRACE_S:.0f} s (a "
                     "local Ray stopped with the job?). Finished work is kept: run the same command again "
                     "(train: with --resume).\n")
    sys.stderr.flush()
    os._exit(EXIT_TERMINATED)
