"""Every error class of the client as a process: one `<CODE>: <message>` line on stderr,
nothing on stdout, exit 2 (bad usage), 1 (the driver said no) or 3 (driver unreachable),
never a traceback (the `aiocsi` helper fails any run that prints one)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from aiocsi._proto.csi import v1 as csi

from .client_cli import aiocsi
from .conftest import Csi
from .process import serve_process

TIMEOUT = 30.0


async def test_no_socket_is_unreachable(workdir: Path) -> None:
    missing = workdir / "nothing.sock"
    ran = await aiocsi("volume", "list", "--endpoint", str(missing))
    assert ran.code == 3
    assert ran.error_line() == (
        f"UNAVAILABLE: no socket at {missing} (is the driver running? set --endpoint or "
        "CSI_ENDPOINT)"
    )


async def test_a_socket_nobody_listens_on_is_unreachable(workdir: Path) -> None:
    stale = workdir / "stale.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(stale))
    left.close()  # the file stays, as a killed driver leaves it
    ran = await aiocsi("info", "--json", endpoint=stale)
    assert ran.code == 3
    assert ran.error_line() == (
        f"UNAVAILABLE: nobody is listening on {stale} (a socket left behind by a driver that "
        "is gone?)"
    )
    not_socket = workdir / "file"
    not_socket.write_text("")
    ran = await aiocsi("info", endpoint=not_socket)
    assert ran.code == 3
    assert ran.error_line().startswith(f"UNAVAILABLE: {not_socket} is not a socket")


async def test_a_driver_that_does_not_answer_times_out(workdir: Path) -> None:
    silent = workdir / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(silent))
        listener.listen(8)  # connections queue; nothing ever answers them
        started = time.monotonic()
        ran = await aiocsi("info", "--timeout", "500ms", endpoint=silent)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert ran.code == 3
    assert ran.error_line() == (
        f"DEADLINE_EXCEEDED: GetPluginInfo: no answer from {silent} within 0.5 s (--timeout)"
    )
    assert elapsed < 10


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["volume", "create"], "aiocsi volume create: the following arguments are required: NAME"),
        (["volume", "create", "v", "--size", "1.5X"], "argument --size: '1.5X' is not a size"),
        (["volume", "create", "v", "--block", "--fs-type", "ext4"], "--block volumes have no"),
        (["volume", "create", "v", "--param", "novalue"], "'novalue': expected KEY=VALUE"),
        (["volume", "create", "v", "--access-mode", "rwx"], "'rwx': expected one of"),
        (
            ["volume", "create", "v", "--from-snapshot", "s", "--from-volume", "w"],
            "not allowed with argument",
        ),
        (["volume", "creat", "v"], "aiocsi volume: argument ACTION: invalid choice: 'creat'"),
        (["volume"], "aiocsi volume: name an action"),
        (["volume", "list", "--bogus"], "aiocsi volume list: unrecognized arguments: --bogus"),
        (["volume", "list", "--max-entries", "0"], "'0': expected a whole number >= 1"),
        (["info", "--endpoint", "tcp://127.0.0.1:1"], "only unix sockets are supported"),
        (["info", "--timeout", "soon"], "'soon' is not a duration"),
        (["capacity", "--topology", "=x"], "'=x': expected KEY=VALUE"),
    ],
)
async def test_bad_usage_exits_2(workdir: Path, args: list[str], reason: str) -> None:
    ran = await aiocsi(*args, endpoint=workdir / "unused.sock")
    assert ran.code == 2, ran
    line = ran.error_line()
    assert line.startswith("USAGE: aiocsi "), line
    assert reason in line


async def test_the_driver_saying_no_exits_1(cleanup: Path) -> None:
    async with serve_process(cleanup) as server:
        sock = server.socket_path
        ran = await aiocsi("volume", "get", "nosuch", endpoint=sock)
        assert (ran.code, ran.error_line()) == (1, "NOT_FOUND: volume nosuch does not exist")
        ran = await aiocsi(
            "volume", "create", "v", "--param", "colour=blue", "--json", endpoint=sock
        )
        assert ran.code == 1
        assert ran.error_line().startswith("INVALID_ARGUMENT: ")
        assert "colour" in ran.error_line()
        ran = await aiocsi("volume", "attach", "vol-x", "--node", "test-node", endpoint=sock)
        assert (ran.code, ran.error_line()) == (
            1,
            (
                "UNIMPLEMENTED: the driver does not offer ControllerPublishVolume (controller "
                "capability PUBLISH_UNPUBLISH_VOLUME), which `aiocsi volume attach` needs"
            ),
        )
        blocker = cleanup / "a-file"
        blocker.write_text("")
        ran = await aiocsi(
            "volume", "stage", "vol-x", "--staging-path", f"{blocker}/s", endpoint=sock
        )
        assert ran.code == 2
        assert ran.error_line().startswith(
            f"USAGE: aiocsi volume stage: --staging-path {blocker}/s: cannot make the directory: "
            "Not a directory"
        )
        # --endpoint wins over CSI_ENDPOINT.
        ran = await aiocsi("volume", "list", "--endpoint", str(sock), endpoint=cleanup / "no.sock")
        assert ran.code == 0, ran
        await _partial_delete(sock, cleanup)


async def _partial_delete(sock: Path, root: Path) -> None:
    """`volume delete A B`: B is in use; A is deleted, B's refusal is said, exit 1."""
    stubs = Csi.connect(sock)
    try:
        ids = []
        for name in ("a", "b"):
            made = await aiocsi("volume", "create", name, "--size", "16Mi", "--json", endpoint=sock)
            ids.append(made.json()["volume"]["volume_id"])
        staging = root / "stage-b"
        staged = await aiocsi(
            "volume", "stage", ids[1], "--staging-path", str(staging), endpoint=sock
        )
        assert staged.code == 0, staged
        ran = await aiocsi("volume", "delete", ids[0], ids[1], "--json", endpoint=sock)
        assert ran.code == 1
        assert ran.err.startswith("FAILED_PRECONDITION: "), ran
        assert len(ran.err.splitlines()) == 1
        assert ids[1] in ran.err
        assert '"volume_id": "' + ids[0] in ran.out
        listed = await stubs.controller.list_volumes(csi.ListVolumesRequest(), timeout=TIMEOUT)
        assert [e.volume.volume_id for e in listed.entries if e.volume] == [ids[1]]
        unstage = csi.NodeUnstageVolumeRequest(volume_id=ids[1], staging_target_path=str(staging))
        await stubs.node.node_unstage_volume(unstage, timeout=TIMEOUT)
        await stubs.controller.delete_volume(
            csi.DeleteVolumeRequest(volume_id=ids[1]), timeout=TIMEOUT
        )
    finally:
        stubs.close()


async def test_a_node_only_driver_explains_the_missing_controller(cleanup: Path) -> None:
    async with serve_process(cleanup, "--mode", "node") as server:
        ran = await aiocsi("volume", "create", "v", endpoint=server.socket_path)
        assert (ran.code, ran.error_line()) == (
            1,
            (
                "UNIMPLEMENTED: the driver does not offer the Controller service: `aiocsi volume "
                "create` needs its CreateVolume (controller capability CREATE_DELETE_VOLUME)"
            ),
        )
        info = (await aiocsi("info", "--json", endpoint=server.socket_path)).json()
        assert info["controller_capabilities"] is None
        assert info["node_info"]["node_id"] == "test-node"
