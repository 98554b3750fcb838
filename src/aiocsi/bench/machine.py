"""What the figures were measured on (blocking /proc reads: call from a thread)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

_KIB = 1024


def _proc_field(path: str, name: str) -> str | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


def _memory_bytes() -> int | None:
    value = _proc_field("/proc/meminfo", "MemTotal")  # "24575432 kB"
    return int(value.split()[0]) * _KIB if value else None


def process_memory(pid: int) -> dict[str, int | None]:
    """A process's resident memory now (VmRSS) and at its peak (VmHWM), in bytes."""
    found: dict[str, int | None] = {}
    for name in ("VmRSS", "VmHWM"):
        value = _proc_field(f"/proc/{pid}/status", name)  # "61234 kB"
        found[name] = int(value.split()[0]) * _KIB if value else None
    return found


def machine_info() -> dict[str, object]:
    uname = os.uname()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name"),
        "memory_bytes": _memory_bytes(),
        "kernel": uname.release,
        "arch": uname.machine,
        "python": platform.python_version(),
    }
