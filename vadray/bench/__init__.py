"""vadray bench NAME [options]: benchmarks that print a RATIO against a bare baseline.

Each benchmark measures a vadray job and, in the same run and on the same machine, the
simplest code that does the same work without vadray or Ray (a bare baseline). Absolute
speeds depend on the machine and on what else runs on it; the ratio is the figure to read.
Run `vadray bench NAME --help` for the options of one benchmark.
"""
from __future__ import annotations

import argparse
import importlib

# name → (module, one-line description). A module is imported only when its benchmark is
# chosen, so `vadray bench --help` works even when one of them is missing or slow to import.
BENCHMARKS = {
    "ingest": ("vadray.bench.ingest",
               "ingest frames/s end to end (list, probe, decode, Parquet, stats) vs bare PyAV "
               "decode in a process pool"),
    "train": ("vadray.bench.train", "training throughput (Ray Train) vs a bare PyTorch loop"),
    "score": ("vadray.bench.score", "scoring frames/s (Ray Data actor pool) vs bare model inference"),
    "ped2": ("vadray.bench.ped2", "UCSD Ped2 end to end: ingest, train, score, frame AUC/EER"),
    "ped2-direct": ("vadray.bench.ped2_direct",
                    "decode a folder of videos and train in one process without Ray (for a GPU "
                    "machine that has torch and PyAV only); per-epoch test AUC as a diagnostic"),
}


class _LazyBenchParser(argparse.ArgumentParser):
    """The parser of one benchmark; imports its module the first time it has to parse."""

    bench_name = ""
    bench_module = ""

    def parse_known_args(self, args=None, namespace=None):
        if self.bench_module:
            self._load()
        return super().parse_known_args(args, namespace)

    def _load(self) -> None:
        module_name, self.bench_module = self.bench_module, ""
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise  # the module exists but one of its own imports is missing: show that
            self.error(f"benchmark {self.bench_name!r} is not available in this installation "
                       f"(module {module_name} not found)")  # argparse: message, exit 2
        if module.__doc__:
            self.description = module.__doc__.strip()
        module.add_arguments(self)
        self.set_defaults(_bench_run=module.run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vadray.cli import HelpFormatter   # every option's default in --help, as the jobs' own

    subparsers = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True,
                                       parser_class=_LazyBenchParser,
                                       title="benchmarks", help="one of:")
    for name, (module_name, summary) in BENCHMARKS.items():
        sub = subparsers.add_parser(name, help=summary, description=summary,
                                    formatter_class=HelpFormatter)
        sub.bench_name, sub.bench_module = name, module_name


def run(args: argparse.Namespace) -> int:
    return int(args._bench_run(args) or 0)
