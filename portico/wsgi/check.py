"""Is every ``wsgi`` app of a config importable? Asked before a config is used.

``portico -t`` imports the apps in its own process. The master must not import them
itself (a reload must see new code, and a module imported once stays imported): it
asks a forked child, which imports from disk, reports what failed through a pipe and
exits. Errors name the ``wsgi`` directive's file:line and the app's own failing line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from portico.config.directives import WsgiApp
from portico.config.model import Config, LocationConf
from portico.errors import ConfigError
from portico.wsgi.app import AppLoadError, load_app


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


def check_in_child(config: Config) -> list[ConfigError]:
    """Like check_here, in a forked child, so this process imports nothing."""
    if next(apps(config), None) is None:
        return []
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_end)
            lines = [f"{e.file}\0{e.line}\0{e.message}" for e in check_here(config)]
            os.write(write_end, "\n".join(lines).encode("utf-8", "backslashreplace"))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    data = b""
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        return [ConfigError("checking the wsgi apps failed", config.path)]
    errors = []
    for line in data.decode("utf-8").splitlines():
        file, number, message = line.split("\0", 2)
        errors.append(ConfigError(message, file or None, int(number) if number else None))
    return errors
