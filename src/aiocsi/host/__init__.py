"""The host layer: the only code in aiocsi that touches the OS.

Subprocesses run as argv lists through `process.run`; file, sysfs and procfs work runs in
worker threads, so nothing here blocks the event loop. Modules: `process` (commands),
`loop` (loop devices via losetup and sysfs), `mount` (mountinfo, mount, umount),
`fs` (blkid, mkfs, grow, statvfs), `files` (image files in the pool).
"""

from __future__ import annotations
