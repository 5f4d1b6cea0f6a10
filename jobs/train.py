"""Ray job entry point for `vadray train`: train the autoencoder on clip shards (Ray Train).

    ray job submit --working-dir . -- python jobs/train.py INGEST_OUTPUT CHECKPOINT_DIR [options]

The arguments are those of `vadray train --help`: this file only hands them to vadray.cli.main,
so the CLI and the job share one parser and one set of exit statuses (the end of
`vadray train --help` lists them).
Inside a submitted job Ray sets RAY_ADDRESS, so the job joins that cluster; run by hand
without it, it starts a local Ray.
"""
import os
import sys

# `python jobs/train.py` puts jobs/ on sys.path, not the working dir that holds vadray/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vadray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
