"""Run `aiocsi info|volume|snapshot|capacity` as a real process without blocking the loop
(the driver under test may be serving from this very loop)."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .process import aiocsi_argv


@dataclass
class Ran:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self
        return json.loads(self.out)

    def error_line(self) -> str:
        """The one `<CODE>: <message>` line a failed command prints, and nothing on stdout."""
        lines = self.err.splitlines()
        assert len(lines) == 1, self
        assert self.out == "", self
        return lines[0]


async def aiocsi(*args: str, endpoint: Path | None = None, timeout: float = 60.0) -> Ran:
    """One client command; `endpoint` goes through CSI_ENDPOINT, as operators set it."""
    env = dict(os.environ)
    env.pop("CSI_ENDPOINT", None)
    if endpoint is not None:
        env["CSI_ENDPOINT"] = f"unix://{endpoint}"
    proc = await asyncio.create_subprocess_exec(
        *aiocsi_argv(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    ran = Ran(args, proc.returncode, out.decode(), err.decode())
    assert "Traceback" not in ran.err, ran
    return ran
