"""Session-wide guards: system-test gating, the leak guard for loop devices and mounts, and
process state (the current call, the logging configuration) reset around every test."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from aiocsi.context import reset_call, set_call
from aiocsi.host.loop import all_loop_backing_files
from aiocsi.host.mount import parse_mountinfo
from aiocsi.logging import QUIET_LIBRARIES, _StdlibBridge, configure

# Every test directory lives under this short root, so socket paths stay < 108 bytes and
# the leak guard knows exactly which loop devices and mounts are ours.
TEST_ROOT_PREFIX = "/tmp/aiocsi-t-"
REQUIRE_SYSTEM = os.environ.get("AIOCSI_REQUIRE_SYSTEM") == "1"


def system_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "system tests need root"
    if not Path("/dev/loop-control").exists():
        return "system tests need loop devices (/dev/loop-control)"
    return None


def _under(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(f"{root}/")


def leftovers_under(root: Path) -> list[str]:
    """Loop devices backed by files under `root` (and views stacked on them), and mounts
    under `root`: what tests, and the drivers they ran, left there."""
    backing = all_loop_backing_files()
    ours = {dev for dev, file in backing.items() if _under(file, root)}
    loops = [f"loop {dev} -> {f}" for dev, f in backing.items() if dev in ours or f in ours]
    mountinfo = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    mounts = [f"mount {m.mount_point}" for m in mountinfo if _under(m.mount_point, root)]
    return sorted(loops) + mounts


@pytest.fixture(scope="session", autouse=True)
def test_root() -> Iterator[Path]:
    """The session's directory; the leak guard fails the run if anything under it survives."""
    root = Path(tempfile.mkdtemp(prefix=TEST_ROOT_PREFIX))
    try:
        yield root
    finally:
        leaks = leftovers_under(root)
        if not leaks:
            shutil.rmtree(root, ignore_errors=True)
        assert not leaks, f"tests leaked resources under {root}: {leaks}"


@pytest.fixture
def workdir(test_root: Path, request: pytest.FixtureRequest) -> Path:
    """A short per-test directory under the session root."""
    return Path(tempfile.mkdtemp(dir=test_root, prefix=request.node.name[:12] + "-"))


@dataclass(frozen=True)
class LoggingState:
    """What `aiocsi.logging.configure` changes, as far as a later test could notice it."""

    structlog_config: dict[str, Any]
    bridges: tuple[logging.Handler, ...]
    root_level: int
    library_levels: tuple[int, ...]
    bound: dict[str, Any]

    @classmethod
    def current(cls) -> LoggingState:
        root = logging.getLogger()
        config = structlog.get_config()
        # The processor list is live (capture_logs edits it in place): keep a copy.
        config["processors"] = list(config["processors"])
        return cls(
            config,
            # Only the driver's handlers: pytest adds and removes its own around each phase.
            tuple(h for h in root.handlers if isinstance(h, _StdlibBridge)),
            root.level,
            tuple(logging.getLogger(name).level for name in QUIET_LIBRARIES),
            structlog.contextvars.get_contextvars(),
        )

    def restore(self) -> None:
        config = self.structlog_config
        structlog.configure(**{**config, "processors": list(config["processors"])})
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, _StdlibBridge):
                root.removeHandler(handler)
        for handler in self.bridges:
            root.addHandler(handler)
        root.setLevel(self.root_level)
        for name, level in zip(QUIET_LIBRARIES, self.library_levels, strict=True):
            logging.getLogger(name).setLevel(level)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**self.bound)


@pytest.fixture(scope="session", autouse=True)
def default_logging() -> LoggingState:
    """The configuration every test starts with: the driver's default (JSON, info)."""
    configure("json", "info")
    return LoggingState.current()


@pytest.fixture(autouse=True)
def _process_state(default_logging: LoggingState) -> Iterator[None]:
    """Every test starts with no current call and the default logging, whatever the test
    before it set (a call holding secrets, a debug configuration writing to a buffer)."""
    token = set_call(None)
    default_logging.restore()
    try:
        yield
    finally:
        reset_call(token)
        default_logging.restore()


def pytest_sessionstart(session: pytest.Session) -> None:  # noqa: ARG001 - pytest hook signature
    reason = system_unavailable_reason()
    if reason is not None and REQUIRE_SYSTEM:
        pytest.exit(f"AIOCSI_REQUIRE_SYSTEM=1 but {reason}", returncode=1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = system_unavailable_reason()
    for item in items:
        if "system" in item.path.parts:
            item.add_marker(pytest.mark.system)
        if reason is not None and item.get_closest_marker("system") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    """On CI (AIOCSI_REQUIRE_SYSTEM=1) a skipped test is a failed test: nothing may pass by
    not running. Records a failure for `call_failed`."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_SYSTEM and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped on CI, which counts as a failure: {report.longrepr}"
    if report.failed and report.when in {"setup", "call"}:
        item.stash[_FAILED] = True


_FAILED = pytest.StashKey[bool]()


def call_failed(item: pytest.Item) -> bool:
    """Whether `item` already failed (in setup or in its body), for teardown-time guards."""
    return item.stash.get(_FAILED, False)
