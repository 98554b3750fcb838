"""The host layer: the only code in aiocsi that touches the OS.

Subprocesses run as argv lists through `process.run`; file work and system calls run in
worker threads (`aiocsi.threads`); procfs and sysfs, kernel memory, are read on the event
loop. Modules: `process` (commands), `syscalls` (mount(2), umount2(2), the loop ioctls),
`loop` (loop devices via the ioctls and sysfs), `mount` (mountinfo, mount, unmount),
`fs` (blkid, mkfs, grow, statvfs), `files` (image files in the pool, path helpers),
`sysfs` (loop devices and their backing files), `fserrors` (write errors the kernel
recorded for a loop device and its filesystem).
"""

from __future__ import annotations
