"""Sizes as people write them (`1Gi`, `500M`, `1.5G`, bytes) and as they read them."""

from __future__ import annotations

import math
import re
from decimal import Decimal

from aiocsi.config import parse_size as parse_whole_size

_QUANTITY = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMGTkmgt]i?)?[Bb]?")
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def parse_size(text: str) -> int:
    """Bytes from `1073741824`, `512Mi`, `1Gi`, `1.5G` or `500MB`; fractions round up."""
    match = _QUANTITY.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size (examples: 1Gi, 500M, 1.5G, 1073741824)")
    number, unit = Decimal(match.group(1)), match.group(2) or ""
    # The driver's own parser owns the unit table; it takes whole numbers only.
    return math.ceil(number * parse_whole_size(f"1{unit}"))


def human_size(size: int) -> str:
    """`1.5 GiB`, `64 MiB`, `512 B`: one decimal at most, binary units as Kubernetes shows."""
    value = float(size)
    for unit in _BINARY_UNITS:
        if abs(value) < 1024 or unit == _BINARY_UNITS[-1]:  # noqa: PLR2004 - binary step
            break
        value /= 1024
    if unit == "B":
        return f"{size} B"
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"
