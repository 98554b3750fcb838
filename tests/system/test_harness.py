"""The harness's guards can fail: a test that leaks a mount or a loop device, and a test
whose loop stalls while a driver runs, are reported; drivers run on uvloop.

The deliberately bad tests run in a pytest of their own (a subprocess, with this suite's
fixtures), so their failure is the thing observed, not a failure of this test.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import uvloop

from tests.conftest import leftovers_under

from .conftest import WATCHDOG_TASK, Driver

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]

BAD_TESTS = """
import json
import os
import subprocess
import time
from pathlib import Path


def _mount_tmpfs(point: Path) -> None:
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "leak", str(point)], check=True)


def test_leaks_a_mount_and_a_loop_device(cleanup: Path) -> None:
    _mount_tmpfs(cleanup / "leaked-mount")
    image = cleanup / "leaked.img"
    image.write_bytes(bytes(1 << 20))
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    record = {"root": str(cleanup), "mount": str(cleanup / "leaked-mount"), "device": device}
    Path(os.environ["LEAK_RECORD"]).write_text(json.dumps(record))


def test_cleans_up_after_itself(cleanup: Path) -> None:
    _mount_tmpfs(cleanup / "tidy")
    subprocess.run(["umount", str(cleanup / "tidy")], check=True)


async def test_blocks_the_loop_of_a_driver(driver) -> None:
    time.sleep(0.2)
"""


@pytest.fixture
def bad_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.RunResult:
    pytester.makeconftest('pytest_plugins = ["tests.conftest", "tests.system.conftest"]')
    pytester.makepyfile(test_bad=BAD_TESTS)
    monkeypatch.setenv("LEAK_RECORD", str(pytester.path / "leak.json"))
    monkeypatch.setenv("PYTHONPATH", f"{REPO}:{REPO / 'src'}")
    return pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
    )


def test_a_leaking_test_fails_naming_its_leftovers_and_is_swept(
    bad_run: pytest.RunResult, pytester: pytest.Pytester
) -> None:
    leaked = json.loads((pytester.path / "leak.json").read_text())
    output = bad_run.stdout.str()
    # Each bad test is reported (an error at its teardown fails the run); the tidy one
    # passes: a guard blames the test at fault, and only that one.
    bad_run.assert_outcomes(passed=3, errors=2)
    assert bad_run.ret == pytest.ExitCode.TESTS_FAILED
    bad_run.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_leaks_a_mount_and_a_loop_device*", "*the test left 2 thing*"]
    )
    assert f"mount {leaked['mount']}" in output
    assert f"loop {leaked['device']} -> {leaked['root']}/leaked.img" in output
    # ... and the sweep after the record removed both, so nothing cascades.
    assert leftovers_under(Path(leaked["root"])) == []


def test_a_test_that_stalls_a_drivers_loop_fails(bad_run: pytest.RunResult) -> None:
    bad_run.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_blocks_the_loop_of_a_driver*", "*the event loop stalled for*"]
    )


async def test_a_driver_runs_on_uvloop_under_a_watchdog(driver: Driver) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert WATCHDOG_TASK in {task.get_name() for task in asyncio.all_tasks()}
    assert driver.server is not None
