"""A request leaves no reference cycle behind once it is answered.

Objects in a cycle outlive their request until the garbage collector finds them, and
its collections stop the worker: before the cycles were broken, they put p99 latency
at 2-3x the median on the proxy and the WSGI paths (docs/benchmarks.md). This runs
each kind of request through a real worker built in this process (the harness of
bench/hotpath.py: real config, site, handlers and protocol objects; fake transports
stand in for the kernel) and asks the collector what it would have had to free.
"""

from __future__ import annotations

import gc
import importlib
import sys
from collections import Counter
from pathlib import Path

import pytest
import uvloop

ROOT = Path(__file__).resolve().parents[2]


def hotpath():  # type: ignore[no-untyped-def]
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("bench.hotpath")


def portico_garbage(case: str, workdir: str) -> Counter[str]:
    """Portico's objects that only the collector could free, after 200 requests."""

    async def body() -> Counter[str]:
        one = hotpath().build(case, False, workdir)
        for _ in range(20):
            one()
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(200):
                one()
            gc.collect()
            return Counter(
                type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("portico")
            )
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()

    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(body())
    finally:
        loop.close()


@pytest.mark.parametrize("case", ["static", "proxy", "wsgi", "flask"])
def test_an_answered_request_is_freed_by_refcounting(case: str, tmp_path: Path) -> None:
    assert portico_garbage(case, str(tmp_path)) == Counter()
