"""What `aiocsi <command> --help` says the command accepts: its flags and env variables."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache

_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_ENV = re.compile(r"\[env ([A-Z][A-Z0-9_]*)(?:, then ([A-Z][A-Z0-9_]*))?")


@dataclass(frozen=True)
class Help:
    command: str
    flags: frozenset[str]
    env: frozenset[str]


class HelpError(Exception):
    """`aiocsi <command> --help` did not answer."""


@cache
def help_of(command: str) -> Help:
    """`command` is the words before the first flag: `serve`, `flexvolume install`, ..."""
    done = subprocess.run(
        [sys.executable, "-m", "aiocsi", *command.split(), "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        raise HelpError(
            f"`aiocsi {command} --help` exited {done.returncode}: {done.stderr.strip()}"
        )
    return parse_help(command, done.stdout)


def parse_help(command: str, text: str) -> Help:
    flat = " ".join(text.split())
    flags = frozenset(match.group(0) for match in _FLAG.finditer(flat))
    env = frozenset(name for match in _ENV.finditer(flat) for name in match.groups() if name)
    return Help(command, flags, env)
