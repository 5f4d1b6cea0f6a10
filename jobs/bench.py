"""Ray job entry point for `vadray bench`: the benchmarks, run on the cluster they are submitted to.

    ray job submit --working-dir . -- python jobs/bench.py {ingest,train,score,ped2} [options]

The arguments are those of `vadray bench --help`: this file only hands them to vadray.cli.main,
so the CLI and the job share one parser and one set of exit statuses (the end of
`vadray bench --help` lists them).
Inside a submitted job Ray sets RAY_ADDRESS, so the job joins that cluster; run by hand
without it, it starts a local Ray.
"""
import os
import sys

# `python jobs/bench.py` puts jobs/ on sys.path, not the working dir that holds vadray/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vadray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
