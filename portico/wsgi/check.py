"""Is every ``wsgi`` app of a config importable? Asked before a config is used.

``portico -t`` imports the apps in its own process. The master must not import them
itself (a reload must see new code, and a module imported once stays imported): it
asks a forked child, which imports from disk, reports what failed through a pipe and
exits. Errors name the ``wsgi`` directive's file:line and the app's own failing line.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections.abc import Iterator

from portico.config.directives import WsgiApp
from portico.config.model import Config, LocationConf
from portico.errors import ConfigError
from portico.wsgi.app import AppLoadError, load_app

CHECK_TIMEOUT = 60.0


def apps(config: Config) -> Iterator[tuple[WsgiApp, tuple[str, ...]]]:
    def walk(locations: tuple[LocationConf, ...]) -> Iterator[tuple[WsgiApp, tuple[str, ...]]]:
        for location in locations:
            app = location.values.get("wsgi")
            if app is not None:
                yield app, tuple(location.values["wsgi_path"])
            yield from walk(location.locations)

    for server in config.http.servers:
        yield from walk(server.locations)


def check_here(config: Config) -> list[ConfigError]:
    errors = []
    seen: set[str] = set()
    for app, paths in apps(config):
        if app.spec in seen:
            continue
        seen.add(app.spec)
        try:
            load_app(app.spec, paths)
        except AppLoadError as e:
            errors.append(
                ConfigError(f'wsgi app "{app.spec}" cannot be loaded: {e}', app.file, app.line)
            )
    return errors


def check_in_child(config: Config, timeout: float = CHECK_TIMEOUT) -> list[ConfigError]:
    """Like check_here, in a forked child, so this process imports nothing. An import
    that does not finish within ``timeout`` seconds is an error too."""
    if next(apps(config), None) is None:
        return []
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_end)
            found = [[e.file, e.line, e.message] for e in check_here(config)]
            os.write(write_end, json.dumps(found).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    data = b""
    deadline = time.monotonic() + timeout
    with os.fdopen(read_end, "rb", buffering=0) as f:
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([f], [], [], max(0.0, remaining))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return [
                    ConfigError(f"importing the wsgi apps took more than {timeout:g}s", config.path)
                ]
            chunk = f.read(65536)
            if not chunk:
                break
            data += chunk
    _, status = os.waitpid(pid, 0)
    if status != 0:
        return [ConfigError("checking the wsgi apps failed", config.path)]
    return [ConfigError(message, file or None, line) for file, line, message in json.loads(data)]
