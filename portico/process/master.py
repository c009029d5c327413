"""The master process: binds, forks workers, supervises them; never serves a request.

The loop (gunicorn's arbiter shape): signal handlers only queue the signal and wake the
loop through a pipe; the loop reaps exited workers, replaces those that died, and
dispatches queued signals to ``handle_*`` methods.

Signals, as nginx's:

- HUP    reload: read the config again; if it is invalid, log why and change nothing;
         else bind new addresses, start workers on the new config, ask the old ones to
         stop gracefully, close addresses no longer listed.
- QUIT   graceful stop: workers finish what they are doing, then everyone exits.
- TERM, INT  fast stop.
- USR1   reopen log files (workers too).
- USR2   binary upgrade: start a new master from the program on disk, handing it the
         listening sockets; this pid file becomes ``FILE.oldbin``.
- WINCH  stop this master's workers gracefully (after an upgrade), keep the master.

Graceful stop, step by step:

1. send QUIT to every worker (they stop accepting and finish their requests);
2. wait for them, at most ``worker_shutdown_timeout`` plus a margin;
3. kill what is left, remove the pid file, exit 0.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass

from portico.config import loader
from portico.config.model import Config
from portico.errors import ConfigErrors
from portico.limits import Zone, make_zones
from portico.logs import ErrorLog
from portico.process import sockets as sockets_module
from portico.process.sockets import BindError, SlotKey
from portico.wsgi import check

HANDLED_SIGNALS = (
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGCHLD,
)
STOP_MARGIN = 5.0
# a worker that dies sooner than this after starting counts as crashing in a loop
QUICK_DEATH = 2.0
MAX_BACKOFF = 30.0


@dataclass(slots=True)
class WorkerProcess:
    pid: int
    number: int
    generation: int
    started: float
    stopping: bool = False


class Master:
    def __init__(
        self,
        config: Config,
        error_log: ErrorLog,
        config_path: str | None,
        prefix: str | None,
        config_text: str | None = None,
    ) -> None:
        self.config = config
        # a config made from command line options (portico serve): reload re-reads this
        self.config_text = config_text
        self.error_log = error_log
        self.config_path = config_path
        self.prefix = prefix
        self.sockets: dict[SlotKey, socket.socket] = {}
        self.zones: dict[str, Zone] = {}
        self.workers: dict[int, WorkerProcess] = {}
        self.generation = 0
        self.signals: list[int] = []
        self.stopping: str | None = None  # "fast" or "graceful"
        self.stop_deadline = 0.0
        self.pid_path: str | None = None
        self.respawn_at: dict[int, float] = {}  # worker number → when to start it again
        self.backoff: dict[int, int] = {}  # worker number → quick deaths in a row
        self.winched = False
        self.upgraded = False  # a new master took over our sockets (USR2)
        self.new_master: int | None = None
        # unix socket files this master created (it removes them when it closes them;
        # inherited ones belong to whoever created them)
        self.created_files: set[str] = set()
        self._wake_read = -1
        self._wake_write = -1

    # -- start -----------------------------------------------------------------------

    def start(self) -> None:
        """Bind, write the pid file: everything that can fail before we fork."""
        self._raise_open_file_limit()
        self.zones = make_zones(self.config.http.zones)
        self.sockets = self._open_sockets(self.config, inherited=sockets_module.inherited())
        os.environ.pop(sockets_module.ENVIRONMENT_VARIABLE, None)
        if self.config.pid:
            self._write_pid(self.config.pid)

    def _raise_open_file_limit(self) -> None:
        """Workers need a descriptor per connection (two when proxying): the soft limit
        goes up to the hard one (or to worker_rlimit_nofile), and a limit too small for
        worker_connections is said in the error log, as nginx says it."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = self.config.worker_rlimit_nofile or hard
        if hard != resource.RLIM_INFINITY:
            wanted = min(wanted, hard)
        if wanted != soft:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if self.config.worker_connections > soft:
            self.error_log.log(
                "warn",
                f"{self.config.worker_connections} worker_connections "
                f"exceed open file resource limit: {soft}",
            )

    def _open_sockets(
        self, config: Config, inherited: dict[SlotKey, socket.socket]
    ) -> dict[SlotKey, socket.socket]:
        opened: dict[SlotKey, socket.socket] = {}
        try:
            for address, listen in sockets_module.plan(config).items():
                for key in sockets_module.slots(listen, address, config.worker_processes):
                    sock = self.sockets.get(key) or inherited.pop(key, None)
                    if sock is None:
                        sock = sockets_module.bind(listen, key)
                        if key[0] == "unix":
                            self.created_files.add(key[1])
                    opened[key] = sock
        except BindError:
            for key, sock in opened.items():
                if key not in self.sockets:
                    sock.close()
            raise
        for sock in inherited.values():
            sock.close()
        return opened

    def _write_pid(self, path: str) -> None:
        existing = read_pid(path)
        if existing and existing != os.getpid() and _alive(existing):
            raise BindError(f'pid file "{path}" is held by running process {existing}')
        with open(path + ".tmp", "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(path + ".tmp", path)
        self.pid_path = path

    # -- the loop --------------------------------------------------------------------

    def run(self) -> int:
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_write)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self._queue_signal)
        _set_title(f"portico: master process {' '.join(sys.argv[1:])}".rstrip())
        self.error_log.log("notice", f"portico started, pid {os.getpid()}")
        self._spawn_generation()
        try:
            while True:
                self._wait()
                self._reap()
                while self.signals:
                    self._dispatch(self.signals.pop(0))
                if self.stopping:
                    if not self.workers:
                        break
                    if time.monotonic() > self.stop_deadline:
                        self._signal_workers(signal.SIGKILL)
                else:
                    self._respawn_due()
        finally:
            self._cleanup()
        self.error_log.log("notice", "exit")
        return 0

    def _queue_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def _wait(self) -> None:
        timeout = 1.0
        if self.respawn_at:
            timeout = max(0.0, min(timeout, min(self.respawn_at.values()) - time.monotonic()))
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([self._wake_read], [], [], timeout)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_read, 4096):
                        pass

    def _dispatch(self, signum: int) -> None:
        handler = {
            signal.SIGHUP: self.handle_hup,
            signal.SIGQUIT: self.handle_quit,
            signal.SIGTERM: self.handle_term,
            signal.SIGINT: self.handle_term,
            signal.SIGUSR1: self.handle_usr1,
            signal.SIGUSR2: self.handle_usr2,
            signal.SIGWINCH: self.handle_winch,
            signal.SIGCHLD: lambda: None,  # reaping happens every turn
        }[signal.Signals(signum)]
        handler()

    # -- workers -----------------------------------------------------------------------

    def _spawn_generation(self) -> None:
        self.generation += 1
        self.respawn_at.clear()
        for number in range(self.config.worker_processes):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        # Signals stay blocked across the fork: one that arrives before the worker has
        # its own handlers (a QUIT from a quick reload) waits for them instead of
        # reaching a copy of the master's handler and being lost.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        pid = os.fork()
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                os.close(self._wake_read)
                os.close(self._wake_write)
                self.error_log.ident = f"{os.getpid()}#0"
                _set_title("portico: worker process")
                # import while we may still read everything (the interpreter's own files
                # can be out of the worker user's reach), then drop the privileges
                from portico.worker import serve_in_this_process

                self._drop_privileges()

                mine = sockets_module.for_worker(self.sockets, number)
                for sock in self.sockets.values():
                    if sock not in mine.values():
                        sock.close()  # another worker's reuseport socket
                code = serve_in_this_process(self.config, mine, self.error_log, self.zones)
            except BaseException as e:  # a worker that cannot start says why
                self.error_log.log("emerg", f"worker process could not start: {e!r}")
            finally:
                os._exit(code)
        self.workers[pid] = WorkerProcess(pid, number, self.generation, time.monotonic())

    def _drop_privileges(self) -> None:
        user = self.config.user
        if user is None or os.getuid() != 0:
            return
        os.initgroups(user.name, user.gid)
        os.setgid(user.gid)
        os.setuid(user.uid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                if pid == self.new_master:
                    self._upgrade_ended(status)
                continue
            if os.WIFSIGNALED(status):
                how = f"exited on signal {os.WTERMSIG(status)}"
            else:
                how = f"exited with code {os.WEXITSTATUS(status)}"
            expected = worker.stopping or self.stopping or worker.generation != self.generation
            if expected:
                self.error_log.log("notice", f"worker process {pid} {how}")
                continue
            self.error_log.log("alert", f"worker process {pid} {how}")
            if self.winched:
                continue
            self._schedule_respawn(worker)

    def _upgrade_ended(self, status: int) -> None:
        """The new master of an upgrade exited: this one is the master again (nginx)."""
        self.error_log.log(
            "notice",
            f"the new master process {self.new_master} exited with "
            f"status {status}; keeping the old binary",
        )
        self.new_master = None
        self.upgraded = False
        if self.pid_path and self.pid_path.endswith(".oldbin"):
            original = self.pid_path[: -len(".oldbin")]
            if read_pid(original) is None:
                os.replace(self.pid_path, original)
                self.pid_path = original

    def _schedule_respawn(self, worker: WorkerProcess) -> None:
        """Replace a dead worker at once; only a worker that keeps dying right after
        start (a crash loop) waits, 0.5 s then twice as long each time, up to 30 s."""
        now = time.monotonic()
        quick = self.backoff.get(worker.number, 0) + 1 if now - worker.started < QUICK_DEATH else 0
        self.backoff[worker.number] = quick
        delay = 0.0 if quick <= 1 else min(MAX_BACKOFF, 0.25 * 2 ** (quick - 1))
        if delay:
            self.error_log.log(
                "alert",
                f"worker {worker.number} crashed right after start; "
                f"starting it again in {delay:g}s",
            )
        self.respawn_at[worker.number] = now + delay

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for number, when in list(self.respawn_at.items()):
            if when <= now:
                del self.respawn_at[number]
                self._spawn(number)

    def _signal_workers(self, sig: int, generation: int | None = None) -> None:
        for worker in self.workers.values():
            if generation is None or worker.generation == generation:
                if sig in (signal.SIGQUIT, signal.SIGTERM):
                    worker.stopping = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, sig)

    # -- signal handlers -----------------------------------------------------------------

    def handle_hup(self) -> None:
        if self._stopping("SIGHUP"):
            return
        if self.winched:
            # a rollback (nginx): the workers stopped by WINCH come back with the running
            # configuration; the file may already be the new program's
            self.error_log.log("notice", "signal 1 (SIGHUP) received, starting workers again")
            self.winched = False
            self._spawn_generation()
            return
        self.error_log.log("notice", "signal 1 (SIGHUP) received, reconfiguring")
        try:
            if self.config_text is not None:
                config = loader.load_text(self.config_text, self.config.path, self.config.prefix)
            else:
                config = loader.load(self.config_path, self.prefix)
            errors = check.check_in_child(config)
            if errors:
                raise ConfigErrors(errors)
        except ConfigErrors as e:
            for error in e.errors:
                self.error_log.log("emerg", str(error))
            self.error_log.log("alert", "the configuration was not changed")
            return
        except Exception as e:  # the master must outlive any reload
            self.error_log.log("emerg", f"reading the configuration failed: {e!r}")
            self.error_log.log("alert", "the configuration was not changed")
            return
        try:
            new_sockets = self._open_sockets(config, inherited={})
        except BindError as e:
            self.error_log.log("emerg", str(e))
            self.error_log.log("alert", "the configuration was not changed")
            return
        old_generation = self.generation
        old_sockets = self.sockets
        self.zones = make_zones(config.http.zones, self.zones)
        self.config = config
        self.sockets = new_sockets
        self.winched = False
        self._spawn_generation()
        self._signal_workers(signal.SIGQUIT, old_generation)
        self._close_sockets({k: s for k, s in old_sockets.items() if k not in new_sockets})

    def handle_quit(self) -> None:
        self.error_log.log("notice", "signal 3 (SIGQUIT) received, shutting down gracefully")
        self._begin_stop(
            "graceful", signal.SIGQUIT, self.config.worker_shutdown_timeout + STOP_MARGIN
        )

    def handle_term(self) -> None:
        self.error_log.log("notice", "signal received, exiting")
        self._begin_stop("fast", signal.SIGTERM, STOP_MARGIN)

    def _begin_stop(self, how: str, sig: int, allowed: float) -> None:
        if self.stopping == "fast":
            return
        self.stopping = how
        self.stop_deadline = time.monotonic() + allowed
        self.respawn_at.clear()
        # close our copies of the listening sockets now: once the workers close
        # theirs, new connections are refused instead of queueing unanswered
        self._close_sockets()
        self._signal_workers(sig)

    def handle_usr1(self) -> None:
        self.error_log.log("notice", "signal 10 (SIGUSR1) received, reopening logs")
        self.error_log.reopen()
        self._signal_workers(signal.SIGUSR1)

    def _stopping(self, name: str) -> bool:
        """Reconfiguring while stopping would start workers only to kill them."""
        if self.stopping:
            self.error_log.log("notice", f"{name} ignored: stopping")
        return self.stopping is not None

    def handle_winch(self) -> None:
        if self._stopping("SIGWINCH"):
            return
        self.error_log.log("notice", "signal 28 (SIGWINCH) received, stopping workers")
        self.winched = True
        self.respawn_at.clear()
        self._signal_workers(signal.SIGQUIT)

    def handle_usr2(self) -> None:
        if self._stopping("SIGUSR2"):
            return
        self.error_log.log("notice", "signal 12 (SIGUSR2) received, upgrading the program")
        if self.pid_path and self.pid_path.endswith(".oldbin"):
            self.error_log.log("alert", "an upgrade is already in progress")
            return
        env = dict(os.environ)
        env[sockets_module.ENVIRONMENT_VARIABLE] = sockets_module.describe(self.sockets)
        pid_path = self.pid_path
        if pid_path:
            os.replace(pid_path, pid_path + ".oldbin")
            self.pid_path = pid_path + ".oldbin"
        self.upgraded = True
        pid = os.fork()
        if pid == 0:
            try:
                for sock in self.sockets.values():
                    sock.set_inheritable(True)
                argv = [sys.executable, "-m", "portico", *sys.argv[1:]]
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(1)
        self.new_master = pid
        self.error_log.log("notice", f"started the new master process {pid}")

    def _close_sockets(self, sockets: dict[SlotKey, socket.socket] | None = None) -> None:
        """Close listening sockets (all of them by default)."""
        closing = self.sockets if sockets is None else sockets
        for key, sock in closing.items():
            with contextlib.suppress(OSError):
                sock.close()
            # a unix socket file goes with its socket, if we made it and no new master
            # (upgrade) still listens on it
            if key[0] == "unix" and key[1] in self.created_files and not self.upgraded:
                self.created_files.discard(key[1])
                with contextlib.suppress(OSError):
                    os.unlink(key[1])
        if sockets is None:
            self.sockets = {}

    def _cleanup(self) -> None:
        self._close_sockets()
        if self.pid_path and read_pid(self.pid_path) == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(self.pid_path)
        with contextlib.suppress(OSError):
            os.close(self._wake_read)
            os.close(self._wake_write)


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as e:
        return e.errno == errno.EPERM
    return True


def _set_title(title: str) -> None:
    """Name the process for ps and top, as nginx's processes are named."""
    import setproctitle

    setproctitle.setproctitle(title)
