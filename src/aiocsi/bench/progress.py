"""What a person sees while a run goes: a rich bar, one line per phase, or nothing.

rich is optional (`pip install aiocsi[bench]`): without it, one line per phase on stderr.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any

from aiocsi.bench.render import HAVE_RICH

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aiocsi.bench.runner import Progress

if HAVE_RICH:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.progress import Progress as RichBar


class _Quiet:
    def phase(self, label: str, total: int | None) -> None:
        pass

    def advance(self, *, ok: bool) -> None:
        pass


class _Lines:
    """One line per phase on stderr: for logs and terminals without rich."""

    def phase(self, label: str, total: int | None) -> None:
        sys.stderr.write(f"bench: {label}" + (f" ({total})" if total else "") + "\n")

    def advance(self, *, ok: bool) -> None:
        pass


class _Bar:
    def __init__(self, bar: RichBar) -> None:
        self._bar = bar
        self._task: Any = None
        self._failed = 0

    def phase(self, label: str, total: int | None) -> None:
        if self._task is not None:
            self._bar.stop_task(self._task)
        self._failed = 0
        self._task = self._bar.add_task(label, total=total, failed="")

    def advance(self, *, ok: bool) -> None:
        if self._task is None:
            return
        self._failed += not ok
        failed = f"[red]{self._failed} failed" if self._failed else ""
        self._bar.update(self._task, advance=1, failed=failed)


@contextlib.contextmanager
def progress(enabled: bool | None) -> Iterator[Progress]:
    """A rich bar when asked for (or, by default, when stdout is a terminal), else lines."""
    wanted = sys.stdout.isatty() if enabled is None else enabled
    if not wanted:
        yield _Quiet() if enabled is False else _Lines()
        return
    if not HAVE_RICH:
        yield _Lines()
        return
    bar = RichBar(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[failed]}"),
    )
    with bar:
        yield _Bar(bar)
