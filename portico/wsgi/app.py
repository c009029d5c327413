"""Finding the app: ``MODULE:NAME``, ``MODULE:FACTORY()``, or ``MODULE`` alone.

``MODULE`` alone looks for ``application``, then ``app`` (gunicorn's and Flask's
habits). A factory is called with no arguments. What fails is reported as one line a
user can act on: the exception, and where in their code it was raised.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from portico.errors import PorticoError


class AppLoadError(PorticoError):
    pass


def parse_spec(spec: str) -> tuple[str, str | None, bool]:
    """``"pkg.mod:make()"`` → ("pkg.mod", "make", True)."""
    module, _, attribute = spec.partition(":")
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise AppLoadError(f'invalid app "{spec}": expected MODULE:NAME or MODULE:FACTORY()')
    factory = attribute.endswith("()")
    name = attribute[:-2] if factory else attribute
    if attribute and not all(part.isidentifier() for part in name.split(".")):
        raise AppLoadError(f'invalid app "{spec}": expected MODULE:NAME or MODULE:FACTORY()')
    return module, name or None, factory


def load_app(spec: str, paths: Sequence[str] = ()) -> Callable[..., Any]:
    module_name, name, factory = parse_spec(spec)
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise AppLoadError(f'cannot import "{module_name}": {_describe(e)}') from None
    candidates = [name] if name else ["application", "app"]
    target: Any = None
    for candidate in candidates:
        target = module
        try:
            for part in candidate.split("."):
                target = getattr(target, part)
            break
        except AttributeError:
            target = None
    if target is None:
        wanted = name or "application or app"
        raise AppLoadError(f'module "{module_name}" has no "{wanted}"')
    if factory:
        try:
            target = target()
        except Exception as e:
            raise AppLoadError(f'calling "{spec}" failed: {_describe(e)}') from None
    if not callable(target):
        raise AppLoadError(f'"{spec}" is not callable (a WSGI app is)')
    return target  # type: ignore[no-any-return]


def _describe(error: BaseException) -> str:
    """``ExcType: message (file.py:12)``: the last frame is where the user should look."""
    frames = traceback.extract_tb(error.__traceback__)
    where = ""
    for frame in reversed(frames):
        if "importlib" not in frame.filename:
            where = f" ({frame.filename}:{frame.lineno})"
            break
    if isinstance(error, SyntaxError) and error.filename:
        where = f" ({error.filename}:{error.lineno})"
    return f"{type(error).__name__}: {error}{where}"
