"""Ray job entry point for `vadray evaluate`: frame-level AUC/EER and event counts against labels.

    ray job submit --working-dir . -- python jobs/evaluate.py OUTPUT --labels LABELS_CSV [--json REPORT.json]

The arguments are those of `vadray evaluate --help`: this file only hands them to vadray.cli.main,
so the CLI and the job share one parser and one set of exit statuses (the end of
`vadray evaluate --help` lists them).
Evaluating reads the tables with pyarrow in the job's driver: it starts no Ray tasks.
"""
import os
import sys

# `python jobs/evaluate.py` puts jobs/ on sys.path, not the working dir that holds vadray/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vadray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
