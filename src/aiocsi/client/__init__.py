"""A CSI client for any driver's unix socket, shared by `aiocsi bench`, the CLI and the tests.

Modules: `stubs` (the generated grpclib clients on one connection), `codes` (what a failed
call's code is, and which codes mean the driver did nothing), `requests` (volume
capabilities and the other request parts every caller builds the same way), `sizes`
(`1Gi`, `500M`, `1.5G` in, human-readable sizes out), `cli` (the `aiocsi info|volume|
snapshot|capacity` subcommands). Nothing here is imported by the driver itself, and this
package's `__init__` imports nothing, so that `aiocsi --help` stays quick.
"""

from __future__ import annotations
