"""The committed generated code matches protos/ (regenerating changes nothing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh() -> None:
    pytest.importorskip("grpc_tools", reason="protos extra not installed")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_csi_service_is_generated() -> None:
    from aiocsi._proto.csi import v1 as csi  # noqa: PLC0415 - the import is what is tested

    for name in ("Identity", "Controller", "GroupController", "SnapshotMetadata", "Node"):
        assert hasattr(csi, f"{name}Base")
        assert hasattr(csi, f"{name}Stub")
