#!/usr/bin/env bash
# costs.sh: what one proxied request costs, counted rather than timed, for
# handover and for nginx (and HAProxy) under the same fixed load.
#
# Same upstream and proxy configs as benches/peers.sh (nginx `return 200`
# upstream, 1 worker; nginx `proxy_pass` with upstream keep-alive; HAProxy
# `http-reuse always`; handover with source = target = that upstream), HTTP/1.1
# cleartext by default (PROTO=h2c: HTTP/2 prior knowledge downstream, oha
# --http2; PROTO=tls: HTTP/1.1 over TLS with one self-signed ECDSA P-256
# certificate for all, oha --insecure; the upstream leg stays HTTP/1.1
# cleartext, as in peers.sh). Pinned like `PIN=1 peers.sh`: load generator on LOADGEN_CPUS,
# upstream + proxy on SERVER_CPUS, one proxy thread / worker
# (`PIN=0`: unpinned, PROXY_THREADS = nproc).
#
# Per target, stages (STAGES, default all):
#   stat     perf stat (software events, in-kernel counting: cheap) over a
#            fixed number of requests, twice: open loop (oha -q RATE -n N_OPEN)
#            and closed loop (oha -c CONNS -n N_CLOSED): task-clock, context
#            switches, migrations, page faults, sched_wakeup issued, all
#            syscalls (raw_syscalls:sys_enter) and 26 syscalls by name; plus
#            voluntary/involuntary context switches of every thread from
#            /proc/PID/task/*/status. Everything divided by the requests oha
#            got a 200 for.
#   strace   strace -f -C over N_STRACE open-loop requests: every syscall by
#            kind (slows the proxy ~2-5x, so batching shifts; the perf stat
#            totals are the reference), and the bytes moved by
#            read/write/recv/send/readv/writev per request.
#   valgrind the proxy under valgrind, single thread, closed loop, twice
#            (N_SMALL and N_LARGE requests) and differenced so that startup,
#            warm-up and connection setup cancel: callgrind (user-space
#            instructions per request, deterministic; the profile by
#            component comes from the same two runs), dhat (heap blocks and
#            bytes allocated per request), dhat --mode=copy (bytes copied by
#            memcpy/memmove per request).
#            (VALGRIND_TOOLS picks a subset.)
#   perf     perf record -e cpu-clock -g over a closed loop (CPU profile
#            including the kernel): shares by DSO and by component.
#
#   HANDOVER_BIN=target/release/handover bash benches/costs.sh
#   STAGES="stat strace" TARGETS="nginx handover" bash benches/costs.sh
#
# Output: a Markdown report on stdout and in $OUT_DIR/costs-<stamp>.md, raw
# files in $OUT_DIR/raw/costs-<stamp>/. Everything on 127.0.0.1 ports
# BASE_PORT+1..5; every process started here is stopped by pid on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

TARGETS=${TARGETS:-nginx haproxy handover}
STAGES=${STAGES:-stat strace valgrind perf}
RATE=${RATE:-2000}
N_OPEN=${N_OPEN:-20000}
N_CLOSED=${N_CLOSED:-200000}
N_STRACE=${N_STRACE:-4000}
N_SMALL=${N_SMALL:-2000}
N_LARGE=${N_LARGE:-12000}
PERF_SECONDS=${PERF_SECONDS:-8}
VALGRIND_TOOLS=${VALGRIND_TOOLS:-callgrind dhat dhat-copy}
CONNS=${CONNS:-32}
OHA_CONNS=${OHA_CONNS:-50}
PIN=${PIN:-1}
LOADGEN_CPUS=${LOADGEN_CPUS:-0}
SERVER_CPUS=${SERVER_CPUS:-1}
BASE_PORT=${BASE_PORT:-18300}
BENCH_PATH=${BENCH_PATH:-/c2id/.well-known/openid-configuration}
HANDOVER_BIN=${HANDOVER_BIN:-$ROOT/target/release/handover}
HANDOVER_CFG_EXTRA=${HANDOVER_CFG_EXTRA:-}
OUT_DIR=${OUT_DIR:-$ROOT/benches/results/costs}
OHA=${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}

UP_PORT=$((BASE_PORT + 1))
declare -A PORT=([nginx]=$((BASE_PORT + 2)) [haproxy]=$((BASE_PORT + 3)) [handover]=$((BASE_PORT + 4)))
HO_ADMIN_PORT=$((BASE_PORT + 5))
PROTO=${PROTO:-h1}
UP_BODY='{"status":"ok","service":"bench-upstream","issuer":"http://127.0.0.1/c2id","n":42}'

log() { printf '[costs %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for t in nginx haproxy curl jq perf strace valgrind taskset python3 "$OHA"; do
  command -v "$t" >/dev/null || die "missing tool: $t (bash benches/setup.sh)"
done
[[ " $TARGETS " != *" handover "* || -x $HANDOVER_BIN ]] || die "no $HANDOVER_BIN: cargo build --release"

# Downstream protocol: listener options per server, client flags.
SCHEME=http OHA_PROTO=() CURL_PROTO=() NGX_LISTEN_OPT="" NGX_SERVER_EXTRA="" HAP_BIND_OPT="" HO_PROXY_EXTRA=""
TLS_DIR=""
case $PROTO in
  h1) ;;
  h2c)
    OHA_PROTO=(--http2) CURL_PROTO=(--http2-prior-knowledge)
    NGX_LISTEN_OPT=" http2" HAP_BIND_OPT=" proto h2" ;;
  tls)
    SCHEME=https OHA_PROTO=(--insecure) CURL_PROTO=(-k) ;;
  *) die "PROTO must be h1, h2c or tls" ;;
esac

if [[ $PIN == 1 ]]; then
  LG=(taskset -c "$LOADGEN_CPUS") SRV=(taskset -c "$SERVER_CPUS")
else
  LG=() SRV=()
fi
PROXY_THREADS=${PROXY_THREADS:-$("${SRV[@]}" nproc)}

STAMP=$(date +%F-%H%M%S)
[[ $PROTO != h1 ]] && STAMP="$STAMP-$PROTO"
[[ $PIN == 1 ]] && STAMP="$STAMP-pinned"
RAW=$OUT_DIR/raw/costs-$STAMP
REPORT=$OUT_DIR/costs-$STAMP.md
mkdir -p "$RAW"
WORK=$(mktemp -d /tmp/costs.XXXXXX)
if [[ $PROTO == tls ]]; then
  TLS_DIR=$WORK/tls
  mkdir -p "$TLS_DIR"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" 2>/dev/null
  cat "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" >"$TLS_DIR/haproxy.pem"
  NGX_LISTEN_OPT=" ssl http2"
  NGX_SERVER_EXTRA="ssl_certificate $TLS_DIR/cert.pem; ssl_certificate_key $TLS_DIR/key.pem; ssl_protocols TLSv1.2 TLSv1.3;"
  HAP_BIND_OPT=" ssl crt $TLS_DIR/haproxy.pem alpn h2,http/1.1"
  HO_PROXY_EXTRA="tls_cert = \"$TLS_DIR/cert.pem\"
tls_key = \"$TLS_DIR/key.pem\""
fi

# ---------------------------------------------------------------- lifecycle
declare -A PID=()
stop() { # NAME
  local pid=${PID[$1]:-}
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { log "$1 ($pid) ignored TERM for 30 s; KILL"; kill -KILL "$pid" 2>/dev/null || true; }
  wait "$pid" 2>/dev/null || true
  unset "PID[$1]"
}
cleanup() {
  local n
  for n in "${!PID[@]}"; do stop "$n"; done
  [[ ${KEEP_WORK:-0} == 1 ]] && log "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start() { # NAME LOG CMD...
  local name=$1 logf=$2; shift 2
  "$@" >"$logf" 2>&1 &
  PID[$name]=$!
}
wait_http() { # NAME PORT TIMEOUT_S [h1: plain HTTP/1.1, the upstream]
  local i scheme=$SCHEME
  local -a proto=("${CURL_PROTO[@]}")
  if [[ ${4:-} == h1 ]]; then scheme=http; proto=(); fi
  for ((i = 0; i < $3 * 10; i++)); do
    kill -0 "${PID[$1]}" 2>/dev/null || return 2
    [[ $(curl -sS -m 2 "${proto[@]}" "$scheme://127.0.0.1:$2$BENCH_PATH" 2>/dev/null) == "$UP_BODY" ]] && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------- configs
nginx_conf() { # DIR WORKERS PORT(upstream: empty) MASTER(on|off)
  local d=$1
  mkdir -p "$d/tmp"
  cat <<EOF
worker_processes $2;
master_process $4;
pid $d/nginx.pid;
error_log $d/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body; proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi; uwsgi_temp_path $d/tmp/uwsgi; scgi_temp_path $d/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
EOF
  if [[ -z $3 ]]; then
    cat <<EOF
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        listen 127.0.0.2:$UP_PORT backlog=4096;
        default_type application/json;
        location / { return 200 '$UP_BODY'; }
    }
}
EOF
  else
    cat <<EOF
    upstream bench_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$3 backlog=4096 reuseport$NGX_LISTEN_OPT;
        $NGX_SERVER_EXTRA
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
  fi
}

haproxy_conf() {
  cat <<EOF
global
    nbthread $PROXY_THREADS
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend fe
    bind 127.0.0.1:${PORT[haproxy]}$HAP_BIND_OPT
    default_backend be
backend be
    server up1 127.0.0.1:$UP_PORT
EOF
}

handover_conf() { # DIR
  mkdir -p "$1/journal"
  cat <<EOF
[proxy]
listen = "127.0.0.1:${PORT[handover]}"
$HO_PROXY_EXTRA
[admin]
listen = "127.0.0.1:$HO_ADMIN_PORT"
token_env = "HANDOVER_ADMIN_TOKEN"
[source]
kind = "connect2id"
url = "http://127.0.0.1:$UP_PORT/c2id"
token_env = "HANDOVER_SOURCE_TOKEN"
[target]
kind = "connect2id"
url = "http://127.0.0.2:$UP_PORT/c2id"
token_env = "HANDOVER_TARGET_TOKEN"
[journal]
dir = "$1/journal"
payload_key_env = "HANDOVER_JOURNAL_KEY"
EOF
  [[ -z $HANDOVER_CFG_EXTRA ]] || cat "$HANDOVER_CFG_EXTRA"
}
export HANDOVER_ADMIN_TOKEN=${HANDOVER_ADMIN_TOKEN:-bench-admin-token-0123456789abcdef}
export HANDOVER_SOURCE_TOKEN=${HANDOVER_SOURCE_TOKEN:-bench-source-token}
export HANDOVER_TARGET_TOKEN=${HANDOVER_TARGET_TOKEN:-bench-target-token}
export HANDOVER_JOURNAL_KEY=${HANDOVER_JOURNAL_KEY:-$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')}

# start_target TARGET [WRAPPER...]: the proxy, pinned; WRAPPER (valgrind ...)
# runs it single-process. Sets PIDS_OF (the processes that do the work).
start_target() {
  local t=$1; shift
  local d=$WORK/$t
  mkdir -p "$d"
  case $t in
    nginx)
      if (($#)); then
        nginx_conf "$d" 1 "${PORT[nginx]}" off >"$d/nginx.conf"
      else
        nginx_conf "$d" "$PROXY_THREADS" "${PORT[nginx]}" on >"$d/nginx.conf"
      fi
      start "$t" "$d/stdout.log" "${SRV[@]}" "$@" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log" ;;
    haproxy)
      haproxy_conf >"$d/haproxy.cfg"
      start "$t" "$d/stdout.log" "${SRV[@]}" "$@" haproxy -db -f "$d/haproxy.cfg" ;;
    handover)
      handover_conf "$d" >"$d/handover.toml"
      local threads=$PROXY_THREADS
      (($#)) && threads=1
      start "$t" "$d/stdout.log" env TOKIO_WORKER_THREADS="$threads" RUST_LOG="${RUST_LOG:-info}" \
        "${SRV[@]}" "$@" "$HANDOVER_BIN" serve -c "$d/handover.toml" ;;
  esac
  local timeout=15
  (($#)) && timeout=120
  wait_http "$t" "${PORT[$t]}" "$timeout" || { tail -n 20 "$d/stdout.log" >&2; die "$t did not come up"; }
  # The processes to count: nginx's workers (the master only supervises),
  # the process itself otherwise. `env` and `taskset` exec, so the pid is it.
  PIDS_OF=${PID[$t]}
  if [[ $t == nginx && $# == 0 ]]; then
    PIDS_OF=$(pgrep -P "${PID[$t]}" | paste -sd, -)
  elif [[ $t == handover ]]; then
    # A wrapper as HANDOVER_BIN (several processes): count its children too.
    PIDS_OF=$(echo "${PID[$t]}" $(pgrep -P "${PID[$t]}") | tr ' ' ,)
  fi
}

# ---------------------------------------------------------------- load
url() { echo "$SCHEME://127.0.0.1:${PORT[$1]}$BENCH_PATH"; }
oha_open() { # URL N JSON
  "${LG[@]}" "$OHA" "${OHA_PROTO[@]}" -q "$RATE" -n "$2" -c "$OHA_CONNS" --latency-correction --no-tui --output-format json "$1" >"$3"
}
oha_closed() { # URL N JSON
  "${LG[@]}" "$OHA" "${OHA_PROTO[@]}" -n "$2" -c "$CONNS" --no-tui --output-format json "$1" >"$3"
}
ok_count() { jq '.statusCodeDistribution["200"] // 0' "$1"; }
cpu_snap() { awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print t, $9, $5+$6; exit}' /proc/stat; }
cpu_delta() {
  local a=($1) b=($(cpu_snap))
  awk -v t="$((b[0] - a[0]))" -v s="$((b[1] - a[1]))" -v i="$((b[2] - a[2]))" \
    'BEGIN{ if (t<=0) t=1; printf "steal %.1f%% idle %.1f%%", 100*s/t, 100*i/t }'
}
# Sum of voluntary and involuntary context switches over all threads.
ctxt() { # PIDS(comma)
  local p v=0 n=0 a b
  for p in ${1//,/ }; do
    for f in /proc/"$p"/task/*/status; do
      read -r a b < <(awk '/^voluntary_ctxt_switches/{v=$2} /^nonvoluntary_ctxt_switches/{n=$2} END{print v+0, n+0}' "$f" 2>/dev/null || echo "0 0")
      v=$((v + a)) n=$((n + b))
    done
  done
  echo "$v $n"
}

SYSCALLS="read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait epoll_ctl futex accept4 getsockopt setsockopt getpid close sched_yield mmap munmap madvise mprotect brk ioctl connect io_uring_enter"
PERF_EVENTS="task-clock,context-switches,cpu-migrations,page-faults,sched:sched_wakeup,raw_syscalls:sys_enter"
for s in $SYSCALLS; do PERF_EVENTS+=",syscalls:sys_enter_$s"; done

# The per-request table, one row per (target, load, metric): TSV
COSTS=$RAW/costs.tsv
printf 'target\tload\tmetric\tper_request\n' >"$COSTS"
put() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$COSTS"; }

stage_stat() { # TARGET
  local t=$1 load json n c0 c1 snap
  for load in open closed; do
    json=$RAW/$t-stat-$load.json
    c0=$(ctxt "$PIDS_OF"); snap=$(cpu_snap)
    if [[ $load == open ]]; then
      perf stat -x, -e "$PERF_EVENTS" -p "$PIDS_OF" -o "$RAW/$t-stat-$load.perf" -- \
        "${LG[@]}" "$OHA" "${OHA_PROTO[@]}" -q "$RATE" -n "$N_OPEN" -c "$OHA_CONNS" --latency-correction --no-tui --output-format json "$(url "$t")" >"$json"
    else
      perf stat -x, -e "$PERF_EVENTS" -p "$PIDS_OF" -o "$RAW/$t-stat-$load.perf" -- \
        "${LG[@]}" "$OHA" "${OHA_PROTO[@]}" -n "$N_CLOSED" -c "$CONNS" --no-tui --output-format json "$(url "$t")" >"$json"
    fi
    c1=$(ctxt "$PIDS_OF")
    n=$(ok_count "$json")
    local cpu; cpu=$(cpu_delta "$snap")
    log "$t stat $load: $n requests at $(jq -r '.summary.requestsPerSec|round' "$json") req/s, $cpu, load $(cut -d' ' -f1 /proc/loadavg)"
    put "$t" "$load" "requests" "$n"
    put "$t" "$load" "req/s" "$(jq -r '.summary.requestsPerSec|round' "$json")"
    put "$t" "$load" "machine" "$cpu, load $(cut -d' ' -f1 /proc/loadavg)"
    # perf -x, lines: value,unit,event,...
    awk -F, -v n="$n" -v t="$t" -v l="$load" '
      /^#/ || NF < 3 { next }
      { v = $1; e = $3; if (v ~ /not/) next
        sub(/^syscalls:sys_enter_/, "sys:", e); sub(/^raw_syscalls:sys_enter/, "syscalls (all)", e); sub(/^sched:/, "", e)
        if (e == "task-clock") printf "%s\t%s\tCPU us (task-clock)\t%.2f\n", t, l, v / n * 1000   # msec -> us
        else if (v + 0 > 0 || e !~ /^sys:/) printf "%s\t%s\t%s\t%.3f\n", t, l, e, v / n }' \
      "$RAW/$t-stat-$load.perf" >>"$COSTS"
    read -r a0 b0 <<<"$c0"; read -r a1 b1 <<<"$c1"
    put "$t" "$load" "voluntary ctxt switches" "$(awk -v d=$((a1 - a0)) -v n="$n" 'BEGIN{printf "%.3f", d/n}')"
    put "$t" "$load" "involuntary ctxt switches" "$(awk -v d=$((b1 - b0)) -v n="$n" 'BEGIN{printf "%.3f", d/n}')"
  done
}

stage_strace() { # TARGET
  local t=$1 json=$RAW/$t-strace.json out=$RAW/$t-strace.txt spid n
  local -a pa=()
  local p
  for p in ${PIDS_OF//,/ }; do pa+=(-p "$p"); done
  strace -f -C -qq -o "$out" "${pa[@]}" &
  spid=$!
  sleep 1
  oha_open "$(url "$t")" "$N_STRACE" "$json"
  sleep 0.5
  kill -INT "$spid"; wait "$spid" 2>/dev/null || true
  n=$(ok_count "$json")
  # by kind (from the -C summary)
  awk -v n="$n" -v t="$t" '
    /^------/ { sep++; next }
    sep == 1 && NF >= 5 { name = $NF; calls = ($0 ~ /[0-9]+ +[0-9]+ +[a-z_0-9]+$/ && NF == 6) ? $4 : $4; printf "%s\tstrace\tstrace:%s\t%.3f\n", t, name, calls / n }
  ' "$out" >>"$COSTS"
  # bytes through the socket syscalls, by direction
  awk -v n="$n" -v t="$t" '
    / (read|recvfrom|recvmsg|readv)\(/ && / = [0-9]+$/ { r += $NF }
    / (write|sendto|sendmsg|writev)\(/ && / = [0-9]+$/ { w += $NF }
    END { printf "%s\tstrace\tbytes received (read/recv*)\t%.1f\n%s\tstrace\tbytes sent (write/send*/writev)\t%.1f\n", t, r / n, t, w / n }
  ' "$out" >>"$COSTS"
  log "$t strace: $n requests"
}

# valgrind_pair TARGET TOOL_NAME ARGS...: two runs, N_SMALL and N_LARGE
# requests, closed loop; prints "small large" totals of the tool's counter.
stage_valgrind() { # TARGET
  local t=$1 tool n out json
  for tool in $VALGRIND_TOOLS; do
    declare -A tot=()
    for n in $N_SMALL $N_LARGE; do
      out=$RAW/$t-$tool-$n
      local -a vg=(valgrind --log-file="$out.log")
      case $tool in
        callgrind) vg+=(--tool=callgrind --callgrind-out-file="$out.out") ;;
        dhat) vg+=(--tool=dhat --dhat-out-file="$out.out") ;;
        dhat-copy) vg+=(--tool=dhat --mode=copy --dhat-out-file="$out.out") ;;
      esac
      start_target "$t" "${vg[@]}"
      oha_closed "$(url "$t")" 200 "$out.warm.json"
      oha_closed "$(url "$t")" "$n" "$out.json"
      stop "$t"
      case $tool in
        callgrind) tot[$n]=$(awk '/Collected :/{print $NF}' "$out.log" | tail -1) ;;
        dhat*) tot[$n]=$(awk '/Total:/{gsub(/,/,""); print $3, $6; exit}' "$out.log") ;;
      esac
      log "$t $tool $n requests ($(ok_count "$out.json") ok): ${tot[$n]}"
    done
    local d=$((N_LARGE - N_SMALL)) a b
    case $tool in
      callgrind)
        put "$t" valgrind "instructions (user space, callgrind)" "$(awk -v a="${tot[$N_SMALL]}" -v b="${tot[$N_LARGE]}" -v d="$d" 'BEGIN{printf "%.0f", (b-a)/d}')"
        python3 "$HERE/costs_profile.py" callgrind "$RAW/$t-callgrind-$N_SMALL.out" "$RAW/$t-callgrind-$N_LARGE.out" "$d" \
          >"$RAW/$t-callgrind-components.md" 2>"$RAW/$t-callgrind-components.err" || log "$t: callgrind grouping failed"
        ;;
      dhat | dhat-copy)
        read -r a1 a2 <<<"${tot[$N_SMALL]}"; read -r b1 b2 <<<"${tot[$N_LARGE]}"
        local what="heap"; [[ $tool == dhat-copy ]] && what="memcpy/memmove"
        put "$t" valgrind "$what bytes" "$(awk -v a="$a1" -v b="$b1" -v d="$d" 'BEGIN{printf "%.0f", (b-a)/d}')"
        put "$t" valgrind "$what calls/blocks" "$(awk -v a="$a2" -v b="$b2" -v d="$d" 'BEGIN{printf "%.2f", (b-a)/d}')"
        ;;
    esac
    unset tot
  done
}

stage_perf() { # TARGET
  local t=$1 json=$RAW/$t-perf.json
  perf record -q -e cpu-clock -F 4999 -g -p "$PIDS_OF" -o "$RAW/$t-perf.data" -- \
    "${LG[@]}" timeout "$((PERF_SECONDS + 5))" "$OHA" "${OHA_PROTO[@]}" -z "${PERF_SECONDS}s" -c "$CONNS" --no-tui --output-format json "$(url "$t")" >"$json" 2>/dev/null || true
  perf report -i "$RAW/$t-perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' >"$RAW/$t-perf-dso.txt" || true
  perf report -i "$RAW/$t-perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' >"$RAW/$t-perf-sym.txt" || true
  python3 "$HERE/costs_profile.py" perf "$RAW/$t-perf-sym.txt" >"$RAW/$t-perf-components.md" 2>/dev/null || true
  log "$t perf: $(jq -r '.summary.requestsPerSec|round' "$json") req/s while sampled"
}

# ---------------------------------------------------------------- run
T0=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
mkdir -p "$WORK/upstream"
nginx_conf "$WORK/upstream" 1 "" on >"$WORK/upstream/nginx.conf"
start upstream "$WORK/upstream/stdout.log" "${SRV[@]}" nginx -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" -e "$WORK/upstream/error.log"
PORT[upstream]=$UP_PORT
wait_http upstream "$UP_PORT" 10 h1 || die "upstream did not come up"

for t in $TARGETS; do
  for stage in $STAGES; do
    case $stage in
      stat | strace | perf)
        start_target "$t"
        oha_closed "$(url "$t")" 20000 "$RAW/$t-warm.json" # warm-up: pools, page cache, allocator
        "stage_$stage" "$t"
        stop "$t" ;;
      valgrind) stage_valgrind "$t" ;;
      *) die "unknown stage $stage" ;;
    esac
  done
done
ELAPSED=$(($(date +%s) - T0))

# ---------------------------------------------------------------- report
{
  echo "# Per-request costs, $(date '+%F %T %Z')"
  echo
  echo "- host: $(nproc) CPUs, kernel $(uname -r), load avg at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg); wall time ${ELAPSED}s"
  echo "- downstream protocol: $PROTO (upstream leg HTTP/1.1 cleartext)"
  echo "- mode: PIN=$PIN (load generator on ${LG[*]:-any CPU}, upstream + proxy on ${SRV[*]:-any CPU}), proxy threads/workers $PROXY_THREADS"
  echo "- commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null), src/ dirty files: $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l)"
  echo "- loads: open = \`oha -q $RATE -n $N_OPEN -c $OHA_CONNS\`, closed = \`oha -n $N_CLOSED -c $CONNS\`, strace = open with -n $N_STRACE, valgrind = closed, (${N_LARGE} - ${N_SMALL}) requests differenced"
  echo
  echo "| load | metric | $(echo "$TARGETS" | sed 's/ / | /g') |"
  echo "|---|---|$(for _ in $TARGETS; do printf -- '---:|'; done)"
  awk -F'\t' -v targets="$TARGETS" '
    NR == 1 { next }
    { k = $2 SUBSEP $3; if (!(k in seen)) { seen[k] = 1; order[++n] = k } v[$1, k] = $4 }
    END {
      nt = split(targets, T, " ")
      for (i = 1; i <= n; i++) {
        split(order[i], kk, SUBSEP); line = "| " kk[1] " | " kk[2] " |"
        for (j = 1; j <= nt; j++) line = line " " ((T[j], order[i]) in v ? v[T[j], order[i]] : "") " |"
        print line
      }
    }' "$COSTS"
  for t in $TARGETS; do
    for f in "$RAW/$t-callgrind-components.md" "$RAW/$t-perf-components.md"; do
      [[ -s $f ]] || continue
      echo
      echo "## $t: $(basename "$f" .md)"
      echo
      cat "$f"
    done
  done
  echo
  echo "Raw: \`$RAW\`"
} >"$REPORT"
cat "$REPORT"
log "wrote $REPORT"
