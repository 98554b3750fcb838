"""One client command: connect, call, print, and the exit code of what happened."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aiocsi.client.cli import info, node, snapshots, volumes
from aiocsi.client.cli.parser import usage_line
from aiocsi.client.cli.render import show
from aiocsi.client.cli.session import (
    EXIT_REFUSED,
    EXIT_USAGE,
    ClientError,
    PartialFailure,
    Session,
)
from aiocsi.client.codes import BadResponse
from aiocsi.client.stubs import CsiStubs

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

    from aiocsi.client.cli.render import Output

    Command = Callable[[Session, argparse.Namespace], Awaitable[Output]]

EXIT_INTERRUPTED = 130  # the shell's code for SIGINT
COMMANDS: dict[str, Command] = {
    "info": info.info,
    "capacity": snapshots.capacity,
    **{f"volume {name}": command for name, command in volumes.COMMANDS.items()},
    **{f"volume {name}": command for name, command in node.COMMANDS.items()},
    **{f"snapshot {name}": command for name, command in snapshots.COMMANDS.items()},
}


async def _run(args: argparse.Namespace) -> Output:
    stubs = CsiStubs.connect(Path(args.endpoint))
    try:
        session = Session(stubs, args.endpoint, args.timeout, args.client_command)
        return await COMMANDS[args.client_command](session, args)
    finally:
        stubs.close()


def run(args: argparse.Namespace) -> int:
    try:
        output = asyncio.run(_run(args))
    except ClientError as exc:
        if exc.exit_code == EXIT_USAGE:  # found past argparse: said the way argparse says it
            sys.stderr.write(usage_line(f"aiocsi {args.client_command}", exc.message) + "\n")
        else:
            sys.stderr.write(f"{exc}\n")
        return exc.exit_code
    except PartialFailure as exc:
        output, code = exc.output, exc.exit_code
    except BadResponse as exc:
        sys.stderr.write(f"BAD_RESPONSE: {exc}\n")
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a person gets one line, never a traceback
        sys.stderr.write(f"INTERNAL: the client failed: {type(exc).__name__}: {exc}\n")
        return EXIT_REFUSED
    else:
        code = 0
    try:
        show(output, as_json=args.json)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (`| head`): nothing more to say, and nothing to say it to.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code
