"""Host errors that are not a failed command or system call: the host is not in the state
a call needs. They carry no CSI meaning; the engine maps them (engine/host_errors.py)."""

from __future__ import annotations

from aiocsi.errors import HostFailure


class HostConflict(HostFailure):
    """Something on the host is in the way: a device still open, attached in the other
    mode, a path of the wrong kind where a mount target must go."""


class HostObjectMissing(HostFailure):
    """What the call acts on does not exist on the host (an image file, say)."""
