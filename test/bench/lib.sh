# lib.sh — what the suites that start servers share; sourced, not run.
# shellcheck shell=bash

# alive PID: the process exists and is not a zombie.
alive() {
    [[ -r /proc/$1/stat ]] && [[ $(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

# stop PID: SIGTERM, then SIGKILL if it is still there after 5 s; reaps it.
stop() {
    kill "$1" 2>/dev/null || true
    for _ in $(seq 50); do
        alive "$1" || break
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# stop_all PID...: SIGTERM to each, then SIGKILL for any still there after 5 s; reaps them.
stop_all() {
    local pid left
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        left=0
        for pid in "$@"; do alive "$pid" && left=1; done
        ((left)) || break
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}

# free_port: advances the caller's $port past ports something already listens on.
free_port() {
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
}
