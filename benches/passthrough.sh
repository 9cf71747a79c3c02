#!/usr/bin/env bash
# Pass-through benchmark: the same trivial upstream reached directly, through
# handover and through nginx, in one run. Measures the latency each proxy
# adds at fixed open-loop rates and the maximum throughput (closed loop),
# then prints the comparison against the DESIGN.md section 8 budgets.
# What and why: benches/README.md.
#
#   bash benches/passthrough.sh                # a few minutes
#   ROUNDS=3 DURATION=30 bash benches/passthrough.sh
#
# Knobs (environment):
#   ROUNDS=2             every configuration is measured this many times
#   RATES="2000 5000"    open-loop rates, req/s
#   DURATION=20 WARMUP=3 open-loop measured / warm-up seconds
#   CL_DURATION=10 CL_WARMUP=2   closed-loop measured / warm-up seconds
#   OL_CONNECTIONS=32 CL_CONNECTIONS=32
#   TARGETS="direct handover nginx"   optional extras: handover_warn (handover
#                        with RUST_LOG=warn), bare_hyper (a bare hyper-util proxy
#                        from the load generator: what the stack alone costs)
#   PROXY_CPU=0 LOAD_CPU=1    cores for the proxy under test / the generator
#                        (taskset lists: PROXY_CPU=0,1 LOAD_CPU=0,1 = unpinned)
#   PROXY_WORKERS=1      nginx worker_processes = handover's tokio worker threads
#   LATENCY_UPSTREAM_CPU=$PROXY_CPU THROUGHPUT_UPSTREAM_CPU=$LOAD_CPU
#                        the upstream's core during the open-loop / closed-loop runs
#   QUIET_WAIT=0         before each run, wait up to this many seconds for the
#                        machine to be quiet (programs outside the benchmark
#                        using at most QUIET_LOAD=0.3 cores over 1 s)
#   RESULTS=benches/results/<timestamp>   where the JSON reports go
#
# Everything started here is stopped on exit (trap), by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
RATES=${RATES:-"2000 5000"}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
CL_DURATION=${CL_DURATION:-10}
CL_WARMUP=${CL_WARMUP:-2}
OL_CONNECTIONS=${OL_CONNECTIONS:-32}
CL_CONNECTIONS=${CL_CONNECTIONS:-32}
TARGETS=${TARGETS:-"direct handover nginx"}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
# Where the upstream runs during each phase (see "Core pinning" in
# benches/README.md): with the proxy for the latency runs, with the
# generator for the throughput runs.
LATENCY_UPSTREAM_CPU=${LATENCY_UPSTREAM_CPU:-$PROXY_CPU}
THROUGHPUT_UPSTREAM_CPU=${THROUGHPUT_UPSTREAM_CPU:-$LOAD_CPU}
PROXY_WORKERS=${PROXY_WORKERS:-1}
QUIET_WAIT=${QUIET_WAIT:-0}
QUIET_LOAD=${QUIET_LOAD:-0.3}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=${RESULTS:-benches/results/$STAMP}
# The path requested: a public Connect2id endpoint, forwarded unchanged.
REQUEST_PATH=/c2id/jwks.json

log() { printf '[passthrough] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- tools
need_install=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_install+=(nginx)
command -v taskset >/dev/null 2>&1 || need_install+=(util-linux)
if [ ${#need_install[@]} -gt 0 ]; then
    log "installing ${need_install[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_install[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# ---------------------------------------------------------------- build
log "building handover and the load generator (release)"
cargo build --release --locked --bin handover
LOADGEN=$(cargo bench --locked --bench loadgen --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*loadgen[^"]*\)".*/\1/p' | tail -n 1)
[ -x "$LOADGEN" ] || { log "cannot find the loadgen executable"; exit 1; }
HANDOVER=target/release/handover

# ---------------------------------------------------------------- set-up
WORK=$(mktemp -d -t handover-bench.XXXXXX)
mkdir -p "$RESULTS"
PIDS=()
# Per target: the processes whose CPU time is charged to it.
declare -A CPU_PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 20000))
        if port_free "$port"; then echo "$port"; return; fi
    done
}
UPSTREAM_PORT=$(pick_port)
HANDOVER_PORT=$(pick_port)
HANDOVER_ADMIN_PORT=$(pick_port)
HANDOVER_WARN_PORT=$(pick_port)
HANDOVER_WARN_ADMIN_PORT=$(pick_port)
NGINX_PORT=$(pick_port)
BARE_PORT=$(pick_port)

machine_facts() {
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), kernel $(uname -r)"
    echo "handover: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo ' (src modified)')"
    echo "nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
    echo "proxy workers: $PROXY_WORKERS (nginx worker_processes, handover TOKIO_WORKER_THREADS)"
    echo "pinning: proxy on core $PROXY_CPU, generator on core $LOAD_CPU, upstream on core $LATENCY_UPSTREAM_CPU (open loop) / $THROUGHPUT_UPSTREAM_CPU (closed loop)"
    echo "quiet wait: up to ${QUIET_WAIT}s per run for other load <= $QUIET_LOAD cores"
    echo "rounds=$ROUNDS rates=[$RATES] open-loop ${DURATION}s+${WARMUP}s warm-up x $OL_CONNECTIONS conns; closed-loop ${CL_DURATION}s+${CL_WARMUP}s x $CL_CONNECTIONS conns"
}
machine_facts | tee "$RESULTS/machine.txt" >&2
echo "uptime before: $(uptime)" | tee -a "$RESULTS/machine.txt" >&2

# The upstream: one tokio worker; moved between cores per phase.
taskset -c "$LATENCY_UPSTREAM_CPU" "$LOADGEN" upstream --listen "127.0.0.1:$UPSTREAM_PORT" --threads 1 \
    2>"$WORK/upstream.log" &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")
move_upstream() { taskset -a -p -c "$1" "$UPSTREAM_PID" >/dev/null; }

handover_config() { # PORT ADMIN_PORT JOURNAL_DIR
    cat <<EOF
# Generated by benches/passthrough.sh: plain HTTP, the example's defaults.
# Only GETs are sent: no trigger, so the journal and the sync stay idle.
[proxy]
listen = "127.0.0.1:$1"
[admin]
listen = "127.0.0.1:$2"
[source]
kind = "connect2id"
url = "http://127.0.0.1:$UPSTREAM_PORT/c2id"
token_env = "HANDOVER_SOURCE_TOKEN"
[target]
kind = "connect2id"
# Nothing contacts the target yet: a dead port.
url = "http://127.0.0.1:9/c2id"
token_env = "HANDOVER_TARGET_TOKEN"
[journal]
dir = "$3"
payload_key_env = "HANDOVER_JOURNAL_KEY"
EOF
}

start_handover() { # NAME PORT ADMIN_PORT RUST_LOG
    handover_config "$2" "$3" "$WORK/$1-journal" >"$WORK/$1.toml"
    # One core, one tokio worker: tokio sizes its pool from the CPU
    # affinity already (available_parallelism), TOKIO_WORKER_THREADS makes
    # it explicit. src/main.rs has no knob of its own.
    taskset -c "$PROXY_CPU" env TOKIO_WORKER_THREADS="$PROXY_WORKERS" RUST_LOG="$4" \
        HANDOVER_SOURCE_TOKEN=bench HANDOVER_TARGET_TOKEN=bench \
        HANDOVER_JOURNAL_KEY="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" \
        "$HANDOVER" serve -c "$WORK/$1.toml" 2>"$WORK/$1.log" &
    PIDS+=($!)
    CPU_PIDS[$1]=$!
}

for target in $TARGETS; do
    case $target in
    handover) start_handover handover "$HANDOVER_PORT" "$HANDOVER_ADMIN_PORT" info ;;
    handover_warn) start_handover handover_warn "$HANDOVER_WARN_PORT" "$HANDOVER_WARN_ADMIN_PORT" warn ;;
    nginx)
        mkdir -p "$WORK/nginx"
        cat >"$WORK/nginx.conf" <<EOF
# Generated by benches/passthrough.sh: a minimal reverse proxy doing the
# same job as handover (keep-alive to the upstream, forwarded headers).
daemon off;
master_process on;
worker_processes $PROXY_WORKERS;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    upstream source {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 256;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://source;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
EOF
        taskset -c "$PROXY_CPU" "$NGINX" -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx.conf" \
            2>"$WORK/nginx.log" &
        PIDS+=($!)
        NGINX_PID=$!
        ;;
    bare_hyper)
        taskset -c "$PROXY_CPU" "$LOADGEN" bare-proxy --listen "127.0.0.1:$BARE_PORT" \
            --upstream "127.0.0.1:$UPSTREAM_PORT" --threads "$PROXY_WORKERS" 2>"$WORK/bare_hyper.log" &
        PIDS+=($!)
        CPU_PIDS[bare_hyper]=$!
        ;;
    direct) ;;
    *) log "unknown target $target"; exit 2 ;;
    esac
done

url_of() {
    case $1 in
    direct) echo "http://127.0.0.1:$UPSTREAM_PORT$REQUEST_PATH" ;;
    handover) echo "http://127.0.0.1:$HANDOVER_PORT$REQUEST_PATH" ;;
    handover_warn) echo "http://127.0.0.1:$HANDOVER_WARN_PORT$REQUEST_PATH" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PORT$REQUEST_PATH" ;;
    bare_hyper) echo "http://127.0.0.1:$BARE_PORT$REQUEST_PATH" ;;
    esac
}

for target in $TARGETS; do
    if ! "$LOADGEN" wait-ready --url "$(url_of "$target")" --timeout 20; then
        log "$target did not become ready; its log:"
        cat "$WORK"/*.log >&2 || true
        exit 1
    fi
done
log "all targets ready"
if [ -n "${NGINX_PID:-}" ]; then
    # The master and its worker(s).
    CPU_PIDS[nginx]="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"
fi
cpu_args() { # TARGET
    local pid
    for pid in ${CPU_PIDS[$1]:-}; do printf -- '--cpu-pid %s ' "$pid"; done
}

# ---------------------------------------------------------------- runs
# The generator always has a core of its own; the proxy under test always
# runs on the other one. It also reports the load other programs put on the
# machine during each window (--own-pid: the upstream is ours).
gen() {
    wait_quiet
    taskset -c "$LOAD_CPU" "$LOADGEN" "$@" --own-pid "$UPSTREAM_PID"
}

# Machine-wide busy time in 1/100 s (user nice system irq softirq steal).
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
wait_quiet() {
    [ "$QUIET_WAIT" -gt 0 ] || return 0
    local deadline=$((SECONDS + QUIET_WAIT)) limit b0 b1
    limit=$(awk -v l="$QUIET_LOAD" 'BEGIN { print int(l * 100) }')
    while :; do
        b0=$(busy_ticks); sleep 1; b1=$(busy_ticks)
        [ $((b1 - b0)) -le "$limit" ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "other programs still use $((b1 - b0))% of a core after ${QUIET_WAIT}s; measuring anyway"
            return 0
        fi
    done
}

# Rotate the order of targets every round so a slow drift in machine load
# does not always land on the same one.
rotate() { # ROUND TARGET...
    local n=$1; shift
    local list=("$@") i
    for ((i = 0; i < ${#list[@]}; i++)); do
        echo "${list[$(((i + n) % ${#list[@]}))]}"
    done
}

for ((round = 1; round <= ROUNDS; round++)); do
    # Latency: the upstream beside the proxy, so direct and proxied requests
    # cross between the cores equally often (twice) and the difference is
    # the proxy's own work.
    move_upstream "$LATENCY_UPSTREAM_CPU"
    for rate in $RATES; do
        for target in $(rotate "$round" $TARGETS); do
            gen open-loop --url "$(url_of "$target")" --rate "$rate" \
                --duration "$DURATION" --warmup "$WARMUP" --connections "$OL_CONNECTIONS" \
                --label "target=$target" --label "round=$round" --json $(cpu_args "$target") \
                >"$RESULTS/r$round-open-$rate-$target.json"
            sleep 1
        done
    done
    # Throughput: the proxy alone on its core, which is the bottleneck.
    move_upstream "$THROUGHPUT_UPSTREAM_CPU"
    for target in $(rotate "$round" $TARGETS); do
        gen closed-loop --url "$(url_of "$target")" \
            --duration "$CL_DURATION" --warmup "$CL_WARMUP" --connections "$CL_CONNECTIONS" \
            --label "target=$target" --label "round=$round" --json $(cpu_args "$target") \
            >"$RESULTS/r$round-closed-$target.json"
        sleep 1
    done
    echo "uptime after round $round: $(uptime)" | tee -a "$RESULTS/machine.txt" >&2
done

# ---------------------------------------------------------------- summary
echo
cat "$RESULTS/machine.txt"
echo
"$LOADGEN" summarize "$RESULTS" --json-out "$RESULTS/summary.json" | tee "$RESULTS/summary.txt"
echo
echo "raw reports: $RESULTS"
