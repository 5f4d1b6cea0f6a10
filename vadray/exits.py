"""Exit statuses shared by every job."""

EXIT_OK = 0
EXIT_USAGE = 2     # bad arguments or unreachable input, before any work
EXIT_PARTIAL = 3   # the job finished but some inputs failed (rows in errors/)
EXIT_INTERRUPTED = 130   # Ctrl-C, as shells report SIGINT


class UsageError(ValueError):
    """A wrong configuration or unreachable input: reported at once, exit status 2."""
