#!/usr/bin/env bash
# Install the benchmark peers: nginx, wrk and valgrind from Debian; gunicorn, granian and
# Flask (for the example app) into the project venv. Idempotent: each piece is
# installed only if missing, so the bench scripts call this at every start and
# it costs ~nothing.
#
# Debian's nginx package tries to start its service on install. This machine
# usually has a policy-rc.d that forbids that; if it does not, we stop the
# nginx the install started -- found by /run/nginx.pid appearing or changing
# during our install, never by name -- so no system nginx is left running.
set -euo pipefail

bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root_dir="$(dirname "$bench_dir")"
venv_bin="$root_dir/.venv/bin"
nginx_pid_file=/run/nginx.pid

# Two bench scripts started at once must not race on apt or pip.
exec 9>"/tmp/portico-bench-setup.lock"
flock -w 600 9

log() { echo "bench/setup: $*" >&2; }

# The pid in $nginx_pid_file, or empty.
nginx_pid() { cat "$nginx_pid_file" 2>/dev/null || true; }

# nginx, or nginx-light where that is the package this Debian has.
nginx_package() {
    # Captured first: with pipefail, `apt-cache | grep -q` fails on SIGPIPE.
    local policy
    policy="$(apt-cache policy nginx 2>/dev/null || true)"
    if [[ "$policy" == *"Candidate: "[0-9]* ]]; then
        echo nginx
    else
        echo nginx-light
    fi
}

# Stop the nginx whose pid is $1, if it is alive and really nginx. Bounded.
stop_started_nginx() {
    local pid="$1"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == nginx ]] || return 0
    log "stopping the nginx service the install started (pid $pid)"
    kill -QUIT "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

install_debian_peers() {
    local missing=()
    [[ -x /usr/sbin/nginx ]] || missing+=("$(nginx_package)")
    command -v wrk >/dev/null || missing+=(wrk)
    # (valgrind: for bench/hotpath.py --instructions)
    command -v valgrind >/dev/null || missing+=(valgrind)
    ((${#missing[@]})) || return 0

    local pid_before
    pid_before="$(nginx_pid)"
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # A first attempt can fail on an empty package list; nginx_package is
    # re-evaluated after the update for that case.
    missing=()
    [[ -x /usr/sbin/nginx ]] || missing+=("$(nginx_package)")
    command -v wrk >/dev/null || missing+=(wrk)
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

    local pid_after
    pid_after="$(nginx_pid)"
    if [[ -n "$pid_after" && "$pid_after" != "$pid_before" ]]; then
        stop_started_nginx "$pid_after"
    fi
}

install_python_peers() {
    local missing=()
    [[ -x "$venv_bin/gunicorn" ]] || missing+=(gunicorn)
    [[ -x "$venv_bin/granian" ]] || missing+=(granian)
    # the Flask hello world (examples/hello.py) of wsgi.py and memory.py
    "$venv_bin/python" -c "import flask" 2>/dev/null || missing+=(flask)
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]} into $root_dir/.venv"
    "$venv_bin/pip" install --quiet "${missing[@]}"
}

install_debian_peers
install_python_peers

nginx_version="$(/usr/sbin/nginx -v 2>&1 | sed 's|.*nginx/||')"
wrk_version="$(wrk -v 2>&1 | head -1 | awk '{print $2}' | sed 's|^debian/||' || true)"
gunicorn_version="$("$venv_bin/gunicorn" --version 2>&1 | awk '{print $NF}' | tr -d ')')"
granian_version="$("$venv_bin/granian" --version 2>&1 | awk '{print $NF}')"
flask_version="$("$venv_bin/python" -c "import importlib.metadata as m; print(m.version('flask'))")"
log "nginx $nginx_version, wrk $wrk_version, gunicorn $gunicorn_version, granian $granian_version, flask $flask_version"
