"""`aiocsi bench` entry point: configuration, the run, the report, the exit code.

Exit codes: 0 every call and lifecycle succeeded and nothing was left behind; 1 at least
one call or lifecycle failed, or --timeout stopped the run; 2 bad command line; 3 the run
could not start (driver not serving, socket unreachable, work directory unusable);
4 something could not be cleaned up (listed on stdout and in the report); 130 stopped by
SIGINT/SIGTERM (after cleaning up).
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from aiocsi.bench import render
from aiocsi.bench.app import run_bench
from aiocsi.bench.config import BenchConfig, Scenario, config_from_args
from aiocsi.bench.progress import progress as progress_display
from aiocsi.bench.spawn import SetupError
from aiocsi.config import ConfigError
from aiocsi.logging import configure

if TYPE_CHECKING:
    import argparse

    from aiocsi.bench.report import Report

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_USAGE = 2
EXIT_SETUP = 3
EXIT_LEFTOVERS = 4
EXIT_INTERRUPTED = 130


def exit_code(report: Report) -> int:
    if report.leftovers:
        return EXIT_LEFTOVERS
    if report.interrupted == "signal":
        return EXIT_INTERRUPTED
    return EXIT_OK if report.clean else EXIT_ERRORS


def _fail(message: str) -> None:
    sys.stderr.write(f"aiocsi bench: error: {message}\n")


def _check_outputs(config: BenchConfig) -> None:
    """Refuse before a long run rather than lose its results at the end."""
    for path in (config.json_path, config.plot_path):
        if path is not None and not path.absolute().parent.is_dir():
            raise ConfigError(f"{path}: its directory does not exist")
    if config.plot_path is not None and not render.plot_available():
        raise ConfigError("--plot needs matplotlib (pip install 'aiocsi[plot]')")


def _write_outputs(config: BenchConfig, report: Report) -> None:
    if config.json_path is not None:
        config.json_path.write_text(report.to_json())
    render.render(report, sys.stdout)
    if config.plot_path is not None and config.scenario is Scenario.SWEEP:
        render.plot_sweep(report, config.plot_path)


def main(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        _check_outputs(config)
    except ConfigError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    # The host layer logs through structlog: only warnings, and never on stdout (the report).
    configure("console", "warning", stream=sys.stderr)
    with progress_display(config.progress) as progress:
        try:
            report = asyncio.run(run_bench(config, progress))
        except SetupError as exc:
            _fail(str(exc))
            return EXIT_SETUP
    _write_outputs(config, report)
    return exit_code(report)
