"""Exit statuses shared by every job."""

EXIT_OK = 0
EXIT_FAILED = 1    # the job ran and could not produce its result (a training run that diverged)
EXIT_USAGE = 2     # bad arguments or unreachable input, before any work
EXIT_PARTIAL = 3   # the job finished but some inputs failed (rows in errors/)
EXIT_INTERRUPTED = 130   # Ctrl-C, as shells report SIGINT


class UsageError(ValueError):
    """A wrong configuration or unreachable input: reported at once, exit status 2."""


class JobFailed(RuntimeError):
    """The job ran but cannot produce a usable result: one line saying why, exit status 1."""
