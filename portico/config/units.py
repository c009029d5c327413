"""Sizes and times as nginx writes them, converted once: seconds as float, sizes as int bytes.

    size = 1*DIGIT [ "k" / "K" / "m" / "M" / "g" / "G" ]
    time = 1*( 1*DIGIT [ "ms" / "s" / "m" / "h" / "d" / "w" / "M" / "y" ] )   ; "1h 30m" or "1h30m"

A bare number is bytes for sizes and seconds for times, as in nginx.
"""

from __future__ import annotations

import re

_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SIZE_RE = re.compile(r"(\d+)([kKmMgG]?)")

# nginx: ms, s, m (minutes), h, d, w, M (months = 30 d), y (365 d)
_TIME_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "M": 30 * 86400.0,
    "y": 365 * 86400.0,
}
_TIME_PART_RE = re.compile(r"(\d+)(ms|s|m|h|d|w|M|y)?")


def parse_size(text: str) -> int:
    """``"10k"`` → 10240. Raises ValueError with a message for the user."""
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f'invalid size "{text}" (expected a number with an optional k, m or g)')
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_time(text: str) -> float:
    """``"500ms"`` → 0.5, ``"1h 30m"`` → 5400.0. Raises ValueError with a message for the user."""
    compact = text.replace(" ", "")
    if not compact:
        raise ValueError('invalid time ""')
    total = 0.0
    position = 0
    while position < len(compact):
        match = _TIME_PART_RE.match(compact, position)
        if match is None or match.end() == position:
            raise ValueError(
                f'invalid time "{text}" (expected a number with an optional unit: '
                "ms, s, m, h, d, w, M, y)"
            )
        total += int(match.group(1)) * _TIME_UNITS[match.group(2) or "s"]
        position = match.end()
    return total
