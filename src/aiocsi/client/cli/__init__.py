"""`aiocsi info|volume|snapshot|capacity`: a CSI client for any driver's socket.

Modules: `parser` (the command lines; stdlib only), `run` (one command: connect, call,
print, exit code), `session` (capabilities and the one place call failures become
`<CODE>: <message>`), `render` (JSON documents and tables), `info`, `volumes`, `node`,
`snapshots` (the commands).
"""

from __future__ import annotations
