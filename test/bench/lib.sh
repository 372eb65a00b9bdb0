# lib.sh — what the suites share: stopping servers, ports, nginx's configuration, medians and
# CPU times, and the KEY=value lines of the programs they run; sourced, not run.
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

# nginx_conf DIR PORT MASTER KEEPALIVE: writes DIR/nginx.conf for a one-worker nginx that answers
# every request on 127.0.0.1:PORT with 200 "Hello, World!" (text/plain, access log off),
# everything it writes kept inside DIR. MASTER: master_process on or off; KEEPALIVE: the
# keep-alive directive, e.g. "keepalive_timeout 0" (close after every reply).
nginx_conf() {
    cat >"$1/nginx.conf" <<EOF
worker_processes 1;
master_process $3;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    $4;
    default_type text/plain;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location / {
            return 200 "Hello, World!";
        }
    }
}
EOF
}

# median_fmt FORMAT VALUES...: the median of VALUES, printed with printf FORMAT when it is the
# mean of the two middle values (an even count); median VALUES...: the same with %.2f.
median_fmt() {
    local fmt=$1
    shift
    printf '%s\n' "$@" | sort -g | awk -v fmt="$fmt\n" '{ v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2]; else printf fmt, (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

median() {
    median_fmt %.2f "$@"
}

# cpu_us PID: the CPU time (utime + stime) process PID has used, in microseconds, every thread
# included. Fields are counted after the command name's ')': utime and stime are 14 and 15.
cpu_us() {
    local stat rest
    read -r stat <"/proc/$1/stat"
    rest=${stat##*) }
    # shellcheck disable=SC2086  # split the fields
    set -- $rest
    : "${clk_tck:=$(getconf CLK_TCK)}"
    echo $(( (${12} + ${13}) * 1000000 / clk_tck ))
}

# servers_scratch: sets tmp to a new temporary directory and pids to an empty list; at exit
# (also on SIGINT and SIGTERM) every server whose pid the suite put in pids is stopped
# (stop_all) and tmp is removed.
servers_scratch() {
    tmp=$(mktemp -d)
    pids=()
    trap servers_cleanup EXIT
    trap 'exit 130' INT TERM
}

# shellcheck disable=SC2317  # run by the EXIT trap
servers_cleanup() {
    stop_all "${pids[@]}"
    rm -rf "$tmp"
}

# value FILE KEY: the KEY=value fields of FILE's lines, one a line.
value() {
    awk -v k="$2" '{
        for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) print kv[2] }
    }' "$1"
}

# median_in: the median of stdin's numbers (the upper middle one for an even count).
median_in() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR > 0) print v[int(NR / 2) + 1] }'
}
