from __future__ import annotations

from aiocsi.cli import main

raise SystemExit(main())
