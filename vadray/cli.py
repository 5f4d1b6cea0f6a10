"""The `vadray` command. One parser for the CLI and for `jobs/*.py` (they call `main`).

Each job module defines `add_arguments(parser)` and `run(args) -> int`; it is imported only
when its command runs, so `vadray --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from vadray.exits import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, JobFailed, UsageError,
                          answer_sigterm_as_ctrl_c, stopped_by_sigterm)

COMMANDS = {
    "synth": ("vadray.synth", "generate a synthetic fixed-camera archive (H.264 MP4 + frame labels)"),
    "ingest": ("vadray.ingest", "decode a video archive into Parquet clip shards + normalisation stats"),
    "train": ("vadray.train", "train a spatiotemporal autoencoder on clip shards (Ray Train, DDP)"),
    "score": ("vadray.score", "score a whole archive into frames/events tables (resumable backfill)"),
    "evaluate": ("vadray.evaluate", "frame-level AUC/EER and event counts against labels"),
    "report": ("vadray.report", "plots of regularity over time and an index.html"),
    "query": ("vadray.query", "SQL (DuckDB) over the frames and events tables"),
    "demo": ("vadray.demo", "synth → ingest → train → score → evaluate → report on a local Ray"),
    "bench": ("vadray.bench", "benchmarks: ingest, train, score, ped2, ped2-direct"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option's default where its help does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or not action.option_strings or default is None or default is False
                or default is argparse.SUPPRESS):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default {shown.replace('%', '%%')})"   # argparse %-formats help text


RESUME_HINT = {
    "score": "Run the same command again: finished videos are skipped, the rest are scored.",
    "train": "Run it again with --resume to continue from the last epoch's checkpoint.",
    "ingest": "Run the same command again: it replaces these inputs' shards, nothing is duplicated.",
}


def exit_status(command: str | None = None) -> str:
    """The exit statuses of `command` (of every command when None), for the end of --help."""
    import textwrap

    statuses = ["0 done"]
    if command in (None, "ingest", "score"):
        statuses.append("3 ingest or score finished but some inputs failed (see errors/)")
    statuses += ["2 bad arguments or unreachable input",
                 "1 the job failed" + (" (e.g. training diverged)" if command in (None, "train", "demo", "bench") else "")]
    if command in (None, "ingest", "train", "score", "demo", "bench"):
        statuses += ["130 interrupted (Ctrl-C)", "143 stopped by SIGTERM (kill, Kubernetes; a SIGTERM to the whole "
                     "process group with a local Ray, as timeout sends, may end it with 1); either way finished "
                     "work is kept, and the line printed says how to resume"]
    else:
        statuses.append("130 interrupted (Ctrl-C)")
    return textwrap.fill(", ".join(statuses), width=100, initial_indent="exit status: ", subsequent_indent=" " * 13)


def build_parser(command: str) -> argparse.ArgumentParser:
    module_name, summary = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"vadray {command}", description=(module.__doc__ or summary).strip(),
        formatter_class=HelpFormatter, epilog=exit_status(command))
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)
    return parser


def _top_help() -> str:
    lines = ["usage: vadray COMMAND [options]   (vadray COMMAND --help for details; vadray --version)", "",
             "Semi-supervised video anomaly detection over video archives, on Ray.", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join([*lines, "", exit_status()])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0 if argv else EXIT_USAGE
    if argv[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"vadray {version('vadray')}")
        except PackageNotFoundError:   # a bare checkout run with python -m vadray
            print("vadray (not installed: version unknown)")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"vadray: unknown command {command!r}\n\n{_top_help()}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser(command)
    args = parser.parse_args(argv[1:])  # exits 2 on bad arguments, as argparse does
    answer_sigterm_as_ctrl_c()
    try:
        return int(args._run(args) or 0)
    except UsageError as exc:
        print(f"vadray {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobFailed as exc:
        print(f"vadray {command}: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:   # `vadray query … | head`: the reader left; what it read was right
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # the flush at exit would raise again
        return 128 + signal.SIGPIPE   # what a shell reports of a program SIGPIPE ended
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM: a short line, not Ray's traceback; finished work is kept
        hint = RESUME_HINT.get(command, "Run it again.")
        if stopped_by_sigterm():
            print(f"vadray {command}: stopped (SIGTERM). {hint}", file=sys.stderr)
            return EXIT_TERMINATED
        print(f"vadray {command}: interrupted. {hint}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
