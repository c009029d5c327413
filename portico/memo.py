"""Bounded memo tables for the hot paths.

A request's target, its header names, a backend's header block, an app's header lines:
servers see the same few again and again, so their parsed or checked forms are kept in
plain dicts, looked up with ``dict.get`` where they are used. A table that is full is
emptied rather than trimmed: no bookkeeping per hit (as an LRU would need), and the keys
that matter come back at once. Each caller also bounds the size of what it keeps (a
long key is rare and would make the table large).
"""

from __future__ import annotations

from typing import TypeVar

# the longest URI or Host value kept (a longer one is rare, and varies)
MEMO_KEY_MAX = 512

K = TypeVar("K")
V = TypeVar("V")


def remember(table: dict[K, V], key: K, value: V, size: int) -> V:
    """Keep ``value`` for ``key`` in ``table`` (at most ``size`` entries); return it."""
    if len(table) >= size:
        table.clear()
    table[key] = value
    return value
