"""The per-test leak guard fails a test that leaves a mount or a loop device behind.

A deliberately leaking test runs in a pytest of its own (a subprocess, with this suite's
fixtures), so its failure is the thing observed, not a failure of this test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import leftovers_under

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]

LEAKING_TESTS = """
import json
import os
import subprocess
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
"""


def test_a_leaking_test_fails_naming_its_leftovers_and_is_swept(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest('pytest_plugins = ["tests.conftest", "tests.system.conftest"]')
    pytester.makepyfile(test_leaky=LEAKING_TESTS)
    record = pytester.path / "leak.json"
    monkeypatch.setenv("LEAK_RECORD", str(record))
    monkeypatch.setenv("PYTHONPATH", f"{REPO}:{REPO / 'src'}")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    leaked = json.loads(record.read_text())
    output = result.stdout.str()
    # The leaking test is reported (an error at its teardown fails the run); the tidy one
    # passes: the guard blames the test that leaked, and only that one.
    result.assert_outcomes(passed=2, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_leaks_a_mount_and_a_loop_device*", "*the test left 2 thing*"]
    )
    assert f"mount {leaked['mount']}" in output
    assert f"loop {leaked['device']} -> {leaked['root']}/leaked.img" in output
    # ... and the sweep after the record removed both, so nothing cascades.
    assert leftovers_under(Path(leaked["root"])) == []
