"""The command line: the only place where errors become messages and exit codes.

portico [-c FILE] [-p PREFIX]        run (the built-in default config without -c when
                                     /etc/portico/portico.conf does not exist)
portico -t [-c FILE]                 check the config and exit
portico -s reload|stop|quit|reopen   signal the running master (pid file of the config)
portico -V                           version
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from portico import __version__
from portico.config import loader
from portico.config.model import Config
from portico.errors import ConfigErrors, PorticoError

SIGNALS = {
    "reload": signal.SIGHUP,
    "stop": signal.SIGTERM,
    "quit": signal.SIGQUIT,
    "reopen": signal.SIGUSR1,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portico",
        description="A web front server: static files, reverse proxy, load balancing and "
        "WSGI apps, configured like nginx.",
    )
    parser.add_argument(
        "-c",
        dest="config",
        metavar="FILE",
        help=f"configuration file (default: {loader.DEFAULT_CONFIG_PATH} if it "
        "exists, else the built-in default config)",
    )
    parser.add_argument(
        "-p",
        dest="prefix",
        metavar="PREFIX",
        help="where relative paths in the config start (default: the folder of the config file)",
    )
    parser.add_argument(
        "-t", dest="test", action="store_true", help="test the configuration and exit"
    )
    parser.add_argument(
        "-s", dest="signal", choices=sorted(SIGNALS), help="send a signal to the master process"
    )
    parser.add_argument(
        "-V", "-v", dest="version", action="store_true", help="show the version and exit"
    )
    return parser


def config_path(option: str | None) -> str | None:
    if option:
        return option
    if os.path.exists(loader.DEFAULT_CONFIG_PATH):
        return loader.DEFAULT_CONFIG_PATH
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        return serve(argv[1:])
    args = _parser().parse_args(argv)
    if args.version:
        import httptools
        import uvloop

        print(
            f"portico version: portico/{__version__} (Python {sys.version.split()[0]}, "
            f"uvloop {uvloop.__version__}, httptools {httptools.__version__})"
        )
        return 0
    path = config_path(args.config)
    shown = path or loader.BUILTIN_PATH
    try:
        config = loader.load(path, args.prefix)
        if args.test or not args.signal:
            from portico.wsgi import check

            errors = check.check_here(config) if args.test else check.check_in_child(config)
            if errors:
                raise ConfigErrors(errors)
    except ConfigErrors as e:
        for error in e.errors:
            print(error, file=sys.stderr)
        print(f"portico: configuration file {shown} test failed", file=sys.stderr)
        return 1
    if args.test:
        print(f"portico: the configuration file {shown} syntax is ok", file=sys.stderr)
        print(f"portico: configuration file {shown} test is successful", file=sys.stderr)
        return 0
    if args.signal:
        return send_signal(config, args.signal)
    return run(config, path, args.prefix)


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portico serve",
        description="Run one WSGI app (Flask, Django, any PEP 3333 callable), like gunicorn: "
        "the app runs in portico's workers, behind its HTTP/1.1 server.",
    )
    parser.add_argument(
        "app", metavar="MODULE:APP", help="the app, e.g. examples.hello:app or mypkg:create_app()"
    )
    parser.add_argument(
        "-b",
        "--bind",
        action="append",
        metavar="ADDRESS",
        help="address to listen on: HOST:PORT, [IPv6]:PORT or unix:PATH "
        "(repeatable; default 127.0.0.1:8000)",
    )
    parser.add_argument(
        "-w", "--workers", type=int, default=1, metavar="N", help="worker processes (default 1)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=16,
        metavar="N",
        help="app threads per worker; 0 runs the app on the event loop (default 16)",
    )
    parser.add_argument(
        "--access-log",
        metavar="PATH",
        help="access log file, or - for standard output (default: none)",
    )
    parser.add_argument(
        "--error-log",
        default="stderr",
        metavar="PATH",
        help="error log file (default: standard error)",
    )
    parser.add_argument(
        "--log-level", default="notice", metavar="LEVEL", help="error log level (default notice)"
    )
    parser.add_argument(
        "--chdir",
        default=".",
        metavar="DIR",
        help="folder added to sys.path to import the app (default: the current folder)",
    )
    parser.add_argument("--pid", metavar="FILE", help="pid file, for portico -s")
    parser.add_argument(
        "-t", dest="test", action="store_true", help="check that the app loads, then exit"
    )
    return parser


def serve_config(args: argparse.Namespace) -> str:
    """The config text equivalent to ``portico serve``'s options."""

    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    listens = "\n".join(f"        listen {quote(b)};" for b in args.bind or ["127.0.0.1:8000"])
    access = (
        "off"
        if not args.access_log
        else ("stdout" if args.access_log == "-" else quote(os.path.abspath(args.access_log)))
    )
    error_log = (
        args.error_log
        if args.error_log in ("stderr", "stdout")
        else quote(os.path.abspath(args.error_log))
    )
    pid = f"pid {quote(os.path.abspath(args.pid))};\n" if args.pid else ""
    return (
        f"worker_processes {args.workers};\n"
        f"error_log {error_log} {args.log_level};\n{pid}"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"    access_log {access};\n"
        "    client_max_body_size 100m;\n"
        "    server {\n"
        f"{listens}\n"
        f"        wsgi_threads {args.threads};\n"
        f"        wsgi_path {quote(os.path.abspath(args.chdir))};\n"
        f"        location / {{ wsgi {quote(args.app)}; }}\n"
        "    }\n"
        "}\n"
    )


def serve(argv: list[str]) -> int:
    args = _serve_parser().parse_args(argv)
    text = serve_config(args)
    path = "<portico serve>"
    try:
        config = loader.load_text(text, path, os.path.abspath(args.chdir))
        from portico.wsgi import check

        errors = check.check_here(config) if args.test else check.check_in_child(config)
        if errors:
            raise ConfigErrors(errors)
    except ConfigErrors as e:
        for error in e.errors:
            print(f"portico: {error.message}", file=sys.stderr)
        return 1
    if args.test:
        print(f"portico: app {args.app} loads", file=sys.stderr)
        return 0
    return run(config, None, None, text=text)


def send_signal(config: Config, name: str) -> int:
    from portico.process.master import read_pid

    if not config.pid:
        print(
            f'portico: [error] the configuration {config.path} has no "pid" directive, so '
            "the running master cannot be found",
            file=sys.stderr,
        )
        return 1
    pid = read_pid(config.pid)
    if pid is None:
        print(
            f'portico: [error] invalid PID number in "{config.pid}" (is portico running?)',
            file=sys.stderr,
        )
        return 1
    try:
        os.kill(pid, SIGNALS[name])
    except ProcessLookupError:
        print(f"portico: [error] kill({pid}, {name}) failed (no such process)", file=sys.stderr)
        return 1
    return 0


def run(config: Config, path: str | None, prefix: str | None, text: str | None = None) -> int:
    from portico.logs import ErrorLog
    from portico.process.master import Master

    try:
        error_log = ErrorLog(config.error_log.path, config.error_log.level)
    except OSError as e:
        print(
            f'portico: [emerg] open() "{config.error_log.path}" failed: {e.strerror}',
            file=sys.stderr,
        )
        return 1
    master = Master(config, error_log, path, prefix, text)
    try:
        master.start()
    except PorticoError as e:
        print(f"portico: [emerg] {e}", file=sys.stderr)
        error_log.log("emerg", str(e))
        return 1
    from portico.process.sockets import key_text

    addresses = dict.fromkeys(key_text(key[:3]) for key in master.sockets)
    listening = ", ".join(f"http://{address}" for address in addresses)
    print(
        f"portico {__version__}: {config.path}, {config.worker_processes} worker(s), "
        f"listening on {listening}",
        file=sys.stderr,
        flush=True,
    )
    return master.run()


if __name__ == "__main__":
    sys.exit(main())
