#!/bin/sh
""":"
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3) || {
  echo '{"status": "Failure", "message": "aiocsi.dev/loop needs python3 (>= 3.8) on this host"}'
  exit 1
}
exec "$py" -I "$0" "$@"
"""

# The Flexvolume executable of aiocsi.dev/loop, installed by `aiocsi flexvolume install`.
#
# The kubelet runs it on the host, outside any container: it may rely on nothing but the
# host's python3 (>= 3.8, standard library only): the sh lines above run it isolated,
# /usr/bin/python3 first (the distribution's), else the first python3 on the PATH.
# It answers `init` itself and forwards the volume ops to the aiocsi driver on this node
# over a unix socket: one JSON request line, one JSON reply line. It prints exactly one
# JSON object and nothing else, whatever happens: the kubelet parses stdout and stderr
# together. Secrets (`kubernetes.io/secret/*`) are dropped before anything is sent.
#
# Keep this file Python 3.8 syntax (no match, no walrus-only idioms, no runtime `X | Y`).
# ruff: noqa: EXE001, EXE003, S105 - a template run by /bin/sh first; the prefix is no secret

from __future__ import annotations

import json
import os
import signal
import socket
import sys

ENDPOINT = "/run/aiocsi/flexvolume.sock"  # `aiocsi flexvolume install` writes the real one

SUCCESS = "Success"
NOT_SUPPORTED = "Not supported"
FAILURE = "Failure"
SECRET_PREFIX = "kubernetes.io/secret/"
# The ops the driver serves, and which argument of each is the options JSON.
DRIVER_OPS = {"mount": 1, "unmount": None, "expandfs": 0, "getvolumename": 0}
# Decided and explained in docs/flexvolume.md; never null (the kubelet would then assume
# attach: true).
CAPABILITIES = {
    "attach": False,
    "selinuxRelabel": True,
    "fsGroup": True,
    "supportsMetrics": True,
    "requiresFSResize": True,
}
CONNECT_TIMEOUT_S = 10.0
# mkfs and a grow of a large volume take a while; the kubelet itself never gives up.
REPLY_TIMEOUT_S = 600.0
MAX_REPLY_BYTES = 1 << 20


class Refused(Exception):
    """A Failure with a message for the pod's events."""


def failure(message: str) -> dict[str, object]:
    return {"status": FAILURE, "message": message}


def _options(text: str) -> str:
    """The options JSON without its secrets; malformed text is refused, never echoed."""
    try:
        options = json.loads(text)
    except ValueError as exc:
        what, where = getattr(exc, "msg", "parse error"), getattr(exc, "pos", 0)
        raise Refused(
            f"the options argument is not valid JSON ({what} at character {where})"
        ) from None
    if not isinstance(options, dict):
        raise Refused("the options argument must be a JSON object")
    kept = {k: v for k, v in options.items() if not str(k).startswith(SECRET_PREFIX)}
    return json.dumps(kept)


def _request(op: str, args: list[str]) -> bytes:
    index = DRIVER_OPS[op]
    args = list(args)
    if index is not None and index < len(args):
        args[index] = _options(args[index])
    return json.dumps({"op": op, "args": args}).encode() + b"\n"


def _not_running(path: str, exc: OSError) -> Refused:
    return Refused(
        f"the aiocsi driver does not answer on {path} ({exc.strerror or exc}): is the aiocsi "
        f"pod running on this node with --flexvolume-endpoint unix://{path}?"
    )


def _exchange(path: str, request: bytes) -> bytes:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(CONNECT_TIMEOUT_S)
        try:
            conn.connect(path)
        except OSError as exc:
            raise _not_running(path, exc) from None
        conn.settimeout(REPLY_TIMEOUT_S)
        conn.sendall(request)
        chunks = []
        size = 0
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if chunk.endswith(b"\n") or size > MAX_REPLY_BYTES:
                break
        return b"".join(chunks)
    except socket.timeout:  # noqa: UP041 - not yet TimeoutError on Python 3.8 and 3.9
        raise Refused(
            f"the aiocsi driver did not answer within {REPLY_TIMEOUT_S:.0f} s; the operation "
            "may still finish, and the kubelet's retry will get its result"
        ) from None
    except OSError as exc:
        raise Refused(f"lost the connection to the aiocsi driver: {exc}") from None
    finally:
        conn.close()


def _reply(raw: bytes) -> dict[str, object]:
    if not raw:
        raise Refused(
            "the aiocsi driver closed the connection without an answer (did it restart?); "
            "the kubelet will retry"
        )
    try:
        reply = json.loads(raw.split(b"\n", 1)[0].decode("utf-8"))  # one line is the answer
    except ValueError:
        raise Refused("the aiocsi driver sent an unreadable answer") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("status"), str):
        raise Refused("the aiocsi driver sent an answer without a status")
    return reply


def answer(argv: list[str], endpoint: str = ENDPOINT) -> dict[str, object]:
    """The one reply to `argv` (op and its arguments)."""
    if not argv:
        return failure("no operation given (expected init, mount, unmount, expandfs, ...)")
    op, args = argv[0], argv[1:]
    if op == "init":
        return {"status": SUCCESS, "capabilities": dict(CAPABILITIES)}
    if op not in DRIVER_OPS:
        # attach, detach, waitforattach, isattached, mountdevice, unmountdevice,
        # expandvolume and anything newer: the kubelet then does that part itself.
        return {"status": NOT_SUPPORTED, "message": f"{op} is not supported by aiocsi.dev/loop"}
    try:
        return _reply(_exchange(endpoint, _request(op, args)))
    except Refused as exc:
        return failure(str(exc))


def exit_code(reply: dict[str, object]) -> int:
    return 0 if reply.get("status") in (SUCCESS, NOT_SUPPORTED) else 1


def _interrupted(*_: object) -> None:
    raise KeyboardInterrupt


def _emit(reply: dict[str, object]) -> None:
    # One write of the whole object straight to fd 1: no buffer is left to flush at exit.
    data = (json.dumps(reply) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def run(argv: list[str], endpoint: str = ENDPOINT) -> int:
    """Answer `argv` on stdout; returns the exit code. Never raises, never writes stderr."""
    try:
        reply = answer(argv, endpoint)
    except BaseException as exc:  # noqa: BLE001 - whatever happens, the kubelet gets JSON
        name = "interrupted" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__
        reply = failure(f"the aiocsi.dev/loop executable failed ({name})")
    return report(reply)


def report(reply: dict[str, object]) -> int:
    """Print `reply`; returns its exit code."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _emit(reply)
    except BaseException:  # noqa: BLE001, S110 - a closed stdout leaves nobody to tell
        pass
    return exit_code(reply)


def main() -> None:
    code = 1
    try:
        # Nothing may reach stderr: not a warning, not an interpreter message at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        signal.signal(signal.SIGTERM, _interrupted)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        code = run(sys.argv[1:])
    except BaseException:  # noqa: BLE001, S110 - the exit code is all that is left
        pass
    os._exit(code)


if __name__ == "__main__":
    main()
