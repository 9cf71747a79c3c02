#!/usr/bin/env bash
# peers.sh: side-by-side reverse-proxy benchmark on loopback.
#
# In-repo copy of ../shared/bench/peers.sh (CI runs a clean clone without
# ../shared), extended with a downstream protocol switch, PROTO:
#   h1   (default) HTTP/1.1 cleartext, exactly what ../shared/bench/peers.sh measures
#   h2c  HTTP/2 cleartext, prior knowledge: closed loop `h2load`, open loop `oha --http2`
#   tls  HTTP/1.1 over TLS, one self-signed ECDSA P-256 certificate for every
#        server (handover: rustls, `proxy.tls_cert`/`proxy.tls_key`; nginx and
#        HAProxy: OpenSSL); closed loop wrk, open loop `oha --insecure`
# The upstream leg is HTTP/1.1 cleartext keep-alive in every mode; `direct`
# is the upstream nginx itself on an extra listener speaking PROTO.
# benches/README.md §7 has the method and the figures; the shared README has
# the rationale for interleaving, open loop and pinning.
#
# One trivial upstream (nginx `return 200 '{json}'`), proxies in front of it
# (nginx, HAProxy, and handover if $HANDOVER_BIN is set), then for every target
# (direct, nginx, haproxy, handover) in interleaved rounds:
#   (a) closed-loop max throughput with wrk   -> requests/s
#   (b) open-loop fixed rate with oha          -> p50 / p99 / p99.9 latency
#       (--latency-correction: latency counted from the scheduled send time)
# Medians across rounds, ratios to direct, a Markdown table on stdout and in
# $OUT_DIR/results-<date>.md. README.md beside it has the method and its caveats.
#
# Everything runs on 127.0.0.1 under a private temp prefix; every process this
# script starts is tracked by pid and stopped by pid on exit.
#
# Knobs (environment):
#   ROUNDS=3 DURATION=8s WARMUP=8s COOLDOWN=1
#   WRK_THREADS=1 WRK_CONNS=32           closed loop
#   OHA_RATE=2000 OHA_CONNS=50           open loop
#   BENCH_PATH=/c2id/.well-known/openid-configuration  (GET, a read: pass-through)
#   PROTO=h1|h2c|tls                     downstream protocol (see above)
#   H2_STREAMS=1                         h2c: concurrent streams per connection (h2load -m,
#                                        oha -p); h2load -c is WRK_CONNS, so 32 in flight
#   BASE_PORT=18100                      upstream +1, nginx +2, haproxy +3,
#                                        handover +4, handover admin +5,
#                                        upstream's PROTO listener (direct) +6
#   PIN=0|1 LOADGEN_CPUS=0 SERVER_CPUS=1 PIN=1: taskset the load generators to
#                                        LOADGEN_CPUS, upstream+proxies to SERVER_CPUS
#   UPSTREAM_WORKERS=1                   nginx workers of the upstream
#   NGINX_REUSEPORT=1                    `reuseport` on the nginx proxy listener: spreads
#                                        wrk's connections evenly over its workers
#   PROXY_THREADS=<cpus the servers may use>  nginx worker_processes, haproxy
#                                        nbthread, TOKIO_WORKER_THREADS for handover
#   HANDOVER_BIN=/path/to/handover       optional; `serve -c CFG`
#   HANDOVER_BIN_B=/path/to/handover     optional second build, target `handover-b`
#                                        (ports +7, admin +8): an A/B pair measured
#                                        in the same interleaved rounds
#   HANDOVER_CFG_EXTRA=file              optional TOML appended to the generated config
#   TARGETS="direct nginx haproxy handover"  subset/order of targets (handover-b is
#                                        added after handover when HANDOVER_BIN_B is set)
#   OHA=oha                              oha binary (PATH or ~/.cargo/bin)
#   OUT_DIR=./benches/results/peers      where results-*.md and raw/ go (gitignored)
#   KEEP_WORK=0                          1: keep the temp prefix (configs, logs)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-8s}
COOLDOWN=${COOLDOWN:-1}
WRK_THREADS=${WRK_THREADS:-1}
WRK_CONNS=${WRK_CONNS:-32}
OHA_RATE=${OHA_RATE:-2000}
OHA_CONNS=${OHA_CONNS:-50}
BENCH_PATH=${BENCH_PATH:-/c2id/.well-known/openid-configuration}
BASE_PORT=${BASE_PORT:-18100}
PIN=${PIN:-0}
LOADGEN_CPUS=${LOADGEN_CPUS:-0}
SERVER_CPUS=${SERVER_CPUS:-1}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
NGINX_REUSEPORT=${NGINX_REUSEPORT:-1}
HANDOVER_BIN=${HANDOVER_BIN:-}
HANDOVER_CFG_EXTRA=${HANDOVER_CFG_EXTRA:-}
TARGETS=${TARGETS:-direct nginx haproxy handover}
OUT_DIR=${OUT_DIR:-$PWD/benches/results/peers}
PROTO=${PROTO:-h1}
H2_STREAMS=${H2_STREAMS:-1}
KEEP_WORK=${KEEP_WORK:-0}

UP_PORT=$((BASE_PORT + 1))
NGX_PORT=$((BASE_PORT + 2))
HAP_PORT=$((BASE_PORT + 3))
HO_PORT=$((BASE_PORT + 4))
HO_ADMIN_PORT=$((BASE_PORT + 5))
UP_PROTO_PORT=$((BASE_PORT + 6))
HOB_PORT=$((BASE_PORT + 7))
HOB_ADMIN_PORT=$((BASE_PORT + 8))
HANDOVER_BIN_B=${HANDOVER_BIN_B:-}
if [[ -n $HANDOVER_BIN_B && " $TARGETS " != *" handover-b "* ]]; then
  TARGETS="$TARGETS handover-b"
fi
case $PROTO in
  h1) SCHEME=http ;;
  h2c) SCHEME=http ;;
  tls) SCHEME=https ;;
  *) echo "PROTO must be h1, h2c or tls" >&2; exit 2 ;;
esac

# A small JSON body; no '$' (nginx would expand it) and no single quote.
UP_BODY='{"status":"ok","service":"bench-upstream","issuer":"http://127.0.0.1/c2id","n":42}'

log() { printf '[peers %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- tools
OHA=${OHA:-}
if [[ -z $OHA ]]; then
  if command -v oha >/dev/null; then OHA=$(command -v oha)
  elif [[ -x $HOME/.cargo/bin/oha ]]; then OHA=$HOME/.cargo/bin/oha
  else die "oha not found: bash benches/setup.sh"; fi
fi
for t in nginx haproxy wrk h2load openssl curl jq ss taskset awk; do
  command -v "$t" >/dev/null || die "missing tool: $t"
done

if [[ $PIN == 1 ]]; then
  LG=(taskset -c "$LOADGEN_CPUS")
  SRV=(taskset -c "$SERVER_CPUS")
  MODE="pinned: load generator on CPU $LOADGEN_CPUS, upstream+proxy on CPU $SERVER_CPUS"
else
  LG=()
  SRV=()
  MODE="unpinned: load generator, proxy and upstream share all $(nproc) CPUs"
fi
# nproc honours the affinity mask, so under taskset this counts the server CPUs.
PROXY_THREADS=${PROXY_THREADS:-$("${SRV[@]}" nproc)}

STAMP=$(date +%F-%H%M%S)
SUFFIX=""
[[ $PROTO != h1 ]] && SUFFIX="-$PROTO"
[[ $PIN == 1 ]] && SUFFIX="$SUFFIX-pinned"
RESULTS="$OUT_DIR/results-$STAMP$SUFFIX.md"
RAW="$OUT_DIR/raw/$STAMP$SUFFIX"
mkdir -p "$RAW"
WORK=$(mktemp -d /tmp/peers.XXXXXX)

# ---------------------------------------------------------------- lifecycle
declare -A PID=()      # name -> pid of a process this script started
STARTED=()             # names in start order

stop_one() {
  local name=$1 pid=${PID[$1]:-}
  [[ -n $pid ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored TERM; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  unset "PID[$name]"
}

cleanup() {
  local i
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_one "${STARTED[$i]}"; done
  if [[ $KEEP_WORK == 1 ]]; then log "kept work dir $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }

# wait_http NAME PORT TIMEOUT_S [h1]: the port answers BENCH_PATH with our
# body, in PROTO (or plain HTTP/1.1 with a 4th argument `h1`).
wait_http() {
  local name=$1 port=$2 timeout=$3 body i scheme=$SCHEME
  local -a proto=("${CURL_PROTO[@]}")
  if [[ ${4:-} == h1 ]]; then scheme=http; proto=(); fi
  for ((i = 0; i < timeout * 10; i++)); do
    if [[ -n ${PID[$name]:-} ]] && ! kill -0 "${PID[$name]}" 2>/dev/null; then
      return 2 # process died
    fi
    body=$(curl -sS -m 1 "${proto[@]}" "$scheme://127.0.0.1:$port$BENCH_PATH" 2>/dev/null || true)
    [[ $body == "$UP_BODY" ]] && return 0
    sleep 0.1
  done
  return 1
}

# start NAME LOGFILE CMD...: run in background, record pid.
start() {
  local name=$1 logf=$2; shift 2
  "$@" >"$logf" 2>&1 &
  PID[$name]=$!
  STARTED+=("$name")
  log "started $name (pid ${PID[$name]}): $*"
}

# ---------------------------------------------------------------- protocol
# Downstream listener options per server, curl flags, and (tls) one
# self-signed ECDSA P-256 certificate shared by every server.
TLS_DIR=$WORK/tls
NGX_LISTEN_OPT="" NGX_SERVER_EXTRA="" HAP_BIND_OPT="" HO_PROXY_EXTRA=""
CURL_PROTO=()
case $PROTO in
  h2c)
    CURL_PROTO=(--http2-prior-knowledge)
    NGX_LISTEN_OPT=" http2"  # nginx 1.22: a cleartext `http2` listener speaks h2 with prior knowledge only
    HAP_BIND_OPT=" proto h2"
    ;;
  tls)
    CURL_PROTO=(-k)
    mkdir -p "$TLS_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
      -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
      -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" 2>/dev/null
    cat "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" >"$TLS_DIR/haproxy.pem"
    # Same ALPN offer everywhere (handover's rustls offers h2 and http/1.1);
    # wrk sends no ALPN, oha without --http2 offers http/1.1: HTTP/1.1 is used.
    NGX_LISTEN_OPT=" ssl http2"
    NGX_SERVER_EXTRA="ssl_certificate $TLS_DIR/cert.pem; ssl_certificate_key $TLS_DIR/key.pem; ssl_protocols TLSv1.2 TLSv1.3;"
    HAP_BIND_OPT=" ssl crt $TLS_DIR/haproxy.pem alpn h2,http/1.1"
    HO_PROXY_EXTRA="tls_cert = \"$TLS_DIR/cert.pem\"
tls_key = \"$TLS_DIR/key.pem\""
    ;;
esac

# ---------------------------------------------------------------- configs
nginx_common() { # $1 = dir
  cat <<EOF
pid $1/nginx.pid;
error_log $1/error.log warn;
daemon off;
events { worker_connections 4096; }
EOF
}
nginx_http_common() { # $1 = dir
  cat <<EOF
    access_log off;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path       $1/tmp/proxy;
    fastcgi_temp_path     $1/tmp/fastcgi;
    uwsgi_temp_path       $1/tmp/uwsgi;
    scgi_temp_path        $1/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
EOF
}

write_upstream_conf() {
  local d=$WORK/upstream
  mkdir -p "$d/tmp"
  {
    echo "worker_processes $UPSTREAM_WORKERS;"
    nginx_common "$d"
    echo "http {"
    nginx_http_common "$d"
    cat <<EOF
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        listen 127.0.0.2:$UP_PORT backlog=4096;
$( [[ $PROTO != h1 ]] && echo "        listen 127.0.0.1:$UP_PROTO_PORT backlog=4096$NGX_LISTEN_OPT;" )
        $NGX_SERVER_EXTRA
        default_type application/json;
        location / { return 200 '$UP_BODY'; }
    }
}
EOF
  } >"$d/nginx.conf"
}

write_nginx_proxy_conf() {
  local d=$WORK/nginx NGX_REUSEPORT_OPT=""
  [[ $NGINX_REUSEPORT == 1 ]] && NGX_REUSEPORT_OPT=" reuseport"
  mkdir -p "$d/tmp"
  {
    echo "worker_processes $PROXY_THREADS;"
    nginx_common "$d"
    echo "http {"
    nginx_http_common "$d"
    cat <<EOF
    upstream bench_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$NGX_PORT backlog=4096$NGX_REUSEPORT_OPT$NGX_LISTEN_OPT;
        $NGX_SERVER_EXTRA
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
  } >"$d/nginx.conf"
}

write_haproxy_conf() {
  local d=$WORK/haproxy
  mkdir -p "$d"
  cat >"$d/haproxy.cfg" <<EOF
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
    bind 127.0.0.1:$HAP_PORT$HAP_BIND_OPT
    default_backend be

backend be
    server up1 127.0.0.1:$UP_PORT
EOF
}

# write_handover_conf NAME PORT ADMIN_PORT
write_handover_conf() {
  local d=$WORK/$1 port=$2 admin=$3
  mkdir -p "$d/journal"
  cat >"$d/handover.toml" <<EOF
# generated by bench/peers.sh; source and target are the same trivial upstream
[proxy]
listen = "127.0.0.1:$port"
$HO_PROXY_EXTRA

[admin]
listen = "127.0.0.1:$admin"
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
dir = "$d/journal"
payload_key_env = "HANDOVER_JOURNAL_KEY"
EOF
  if [[ -n $HANDOVER_CFG_EXTRA ]]; then
    printf '\n# appended from %s\n' "$HANDOVER_CFG_EXTRA" >>"$d/handover.toml"
    cat "$HANDOVER_CFG_EXTRA" >>"$d/handover.toml"
  fi
}

# ---------------------------------------------------------------- start
for p in $UP_PORT $NGX_PORT $HAP_PORT $HO_PORT $HO_ADMIN_PORT $UP_PROTO_PORT $HOB_PORT $HOB_ADMIN_PORT; do
  port_free "$p" || die "port $p is already in use (set BASE_PORT)"
done

DIRECT_PORT=$UP_PORT
[[ $PROTO != h1 ]] && DIRECT_PORT=$UP_PROTO_PORT
declare -A PORT=([direct]=$DIRECT_PORT [nginx]=$NGX_PORT [haproxy]=$HAP_PORT [handover]=$HO_PORT [handover-b]=$HOB_PORT)
ACTIVE=()
NOTES=()

write_upstream_conf
start upstream "$WORK/upstream/stdout.log" "${SRV[@]}" nginx -p "$WORK/upstream" \
  -c "$WORK/upstream/nginx.conf" -e "$WORK/upstream/error.log"
if ! wait_http upstream "$UP_PORT" 10 h1 || ! wait_http upstream "$DIRECT_PORT" 10; then
  cat "$WORK/upstream/stdout.log" "$WORK/upstream/error.log" >&2 2>/dev/null || true
  die "upstream did not come up on :$UP_PORT"
fi

for t in $TARGETS; do
  case $t in
    direct) ACTIVE+=(direct) ;;
    nginx)
      write_nginx_proxy_conf
      start nginx "$WORK/nginx/stdout.log" "${SRV[@]}" nginx -p "$WORK/nginx" \
        -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log"
      if wait_http nginx "$NGX_PORT" 10; then ACTIVE+=(nginx); else
        cat "$WORK/nginx/stdout.log" "$WORK/nginx/error.log" >&2 2>/dev/null || true
        NOTES+=("nginx proxy failed to start; skipped"); log "${NOTES[-1]}"; stop_one nginx
      fi ;;
    haproxy)
      write_haproxy_conf
      start haproxy "$WORK/haproxy/stdout.log" "${SRV[@]}" haproxy -db -f "$WORK/haproxy/haproxy.cfg"
      if wait_http haproxy "$HAP_PORT" 10; then ACTIVE+=(haproxy); else
        cat "$WORK/haproxy/stdout.log" >&2 || true
        NOTES+=("haproxy failed to start; skipped"); log "${NOTES[-1]}"; stop_one haproxy
      fi ;;
    handover | handover-b)
      if [[ $t == handover ]]; then bin=$HANDOVER_BIN port=$HO_PORT admin=$HO_ADMIN_PORT
      else bin=$HANDOVER_BIN_B port=$HOB_PORT admin=$HOB_ADMIN_PORT; fi
      if [[ -z $bin ]]; then
        log "no binary for $t (HANDOVER_BIN / HANDOVER_BIN_B); skipped"
        continue
      fi
      if [[ ! -x $bin ]]; then
        NOTES+=("$bin is not an executable file; $t skipped")
        log "${NOTES[-1]}"; continue
      fi
      write_handover_conf "$t" "$port" "$admin"
      # Dummy secrets: the upstream accepts anything. A caller may pre-set them.
      export HANDOVER_ADMIN_TOKEN=${HANDOVER_ADMIN_TOKEN:-bench-admin-token-0123456789abcdef}
      export HANDOVER_SOURCE_TOKEN=${HANDOVER_SOURCE_TOKEN:-bench-source-token}
      export HANDOVER_TARGET_TOKEN=${HANDOVER_TARGET_TOKEN:-bench-target-token}
      export HANDOVER_JOURNAL_KEY=${HANDOVER_JOURNAL_KEY:-$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')}
      start "$t" "$WORK/$t/stdout.log" env TOKIO_WORKER_THREADS="$PROXY_THREADS" \
        "${SRV[@]}" "$bin" serve -c "$WORK/$t/handover.toml"
      rc=0; wait_http "$t" "$port" 15 || rc=$?
      if [[ $rc == 0 ]]; then ACTIVE+=("$t"); else
        why="did not answer $BENCH_PATH with the upstream body within 15 s"
        [[ $rc == 2 ]] && why="exited during startup"
        NOTES+=("$t $why; skipped (log: $RAW/$t-startup.log)")
        log "${NOTES[-1]}"
        cp "$WORK/$t/stdout.log" "$RAW/$t-startup.log" 2>/dev/null || true
        tail -n 20 "$WORK/$t/stdout.log" >&2 2>/dev/null || true
        stop_one "$t"
      fi ;;
    *) die "unknown target: $t" ;;
  esac
done
[[ ${#ACTIVE[@]} -gt 0 ]] || die "no target came up"
[[ ${ACTIVE[0]} == direct ]] || log "warning: 'direct' is not the first target; ratios need it"
for f in upstream/nginx.conf nginx/nginx.conf haproxy/haproxy.cfg handover/handover.toml handover-b/handover.toml; do
  if [[ -f $WORK/$f ]]; then cp "$WORK/$f" "$RAW/${f/\//-}"; fi
done
log "targets: ${ACTIVE[*]} | $MODE | proxy threads: $PROXY_THREADS"
if [[ $PROTO == tls ]]; then
  # What each server negotiates with an HTTP/1.1 client (one probe each).
  for t in "${ACTIVE[@]}"; do
    NOTES+=("TLS $t: $(openssl s_client -connect "127.0.0.1:${PORT[$t]}" -alpn http/1.1 </dev/null 2>/dev/null |
      awk '/^New, /{sub(/^New, /,""); printf "%s", $0} /^ALPN protocol:/{printf ", ALPN %s", $3}')")
  done
fi

# ---------------------------------------------------------------- measure
# /proc/stat aggregate cpu line -> "total steal idle" jiffies
cpu_snap() { awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print t, $9, $5+$6; exit}' /proc/stat; }
cpu_delta() { # $1 = before snapshot -> "steal% idle%"
  local a=($1) b=($(cpu_snap))
  awk -v t="$((b[0] - a[0]))" -v s="$((b[1] - a[1]))" -v i="$((b[2] - a[2]))" \
    'BEGIN{ if (t<=0) t=1; printf "%.1f %.1f", 100*s/t, 100*i/t }'
}

# Closed loop: wrk for HTTP/1.1 (cleartext or TLS), h2load for h2c (same
# thread and connection count; H2_STREAMS streams each). The TSV calls both
# "wrk" so the summary code is shared.
if [[ $PROTO == h2c ]]; then
  WRK_CMD=(h2load -t"$WRK_THREADS" -c"$WRK_CONNS" -m"$H2_STREAMS" -D"${DURATION%s}")
else
  WRK_CMD=(wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$DURATION")
fi
OHA_CMD=("$OHA" -q "$OHA_RATE" -c "$OHA_CONNS" -z "$DURATION" -w --latency-correction --no-tui --output-format json)
case $PROTO in
  h2c) OHA_CMD+=(--http2 -p "$H2_STREAMS") ;;
  tls) OHA_CMD+=(--insecure) ;;
esac
url() { echo "$SCHEME://127.0.0.1:${PORT[$1]}$BENCH_PATH"; }

TSV=$RAW/runs.tsv
printf 'round\ttarget\ttool\trps\tp50_us\tp99_us\tp999_us\terrors\tsteal_pct\tidle_pct\n' >"$TSV"

# run_wrk ROUND TARGET -> appends a row
run_wrk() {
  local r=$1 t=$2 out=$RAW/wrk-r$1-$2.txt snap rps errs cpu
  snap=$(cpu_snap)
  "${LG[@]}" "${WRK_CMD[@]}" "$(url "$t")" >"$out" 2>&1 || true
  cpu=$(cpu_delta "$snap")
  if [[ $PROTO == h2c ]]; then
    # "finished in 8.00s, 41234.50 req/s, ..."; "requests: N total, N started,
    # N done, N succeeded, N failed, N errored, N timeout"; "status codes: N 2xx, ..."
    rps=$(awk '/^finished in/{gsub(/,/,""); printf "%.0f", $4}' "$out")
    errs=$(awk '/^requests:/{n+=$10+$12+$14} /^status codes:/{n+=$5+$7+$9} END{print n+0}' "$out")
  else
    rps=$(awk '/^Requests\/sec:/{printf "%.0f", $2}' "$out")
    errs=$(awk '/Non-2xx or 3xx responses:/{n+=$NF} /Socket errors:/{gsub(/,/,""); n+=$4+$6+$8+$10} END{print n+0}' "$out")
  fi
  [[ $r == warmup ]] && { log "warm-up $t: ${rps:-NA} req/s (discarded)"; return; }
  printf '%s\t%s\twrk\t%s\t\t\t\t%s\t%s\t%s\n' "$r" "$t" "${rps:-NA}" "$errs" ${cpu} >>"$TSV"
  log "round $r wrk $t: ${rps:-NA} req/s, errors $errs, steal/idle% $cpu"
}

# run_oha ROUND TARGET -> appends a row
run_oha() {
  local r=$1 t=$2 out=$RAW/oha-r$1-$2.json snap vals errs cpu got
  snap=$(cpu_snap)
  "${LG[@]}" "${OHA_CMD[@]}" "$(url "$t")" >"$out" 2>"$RAW/oha-r$r-$t.err" || true
  cpu=$(cpu_delta "$snap")
  if vals=$(jq -r '[.latencyPercentiles.p50, .latencyPercentiles.p99, .latencyPercentiles["p99.9"]]
                   | map(if . == null then "NA" else (. * 1e6 | round | tostring) end) | join(" ")' "$out" 2>/dev/null); then
    got=$(jq -r '.summary.requestsPerSec // "NA" | if type == "number" then round else . end' "$out")
    errs=$(jq '([.statusCodeDistribution // {} | to_entries[] | select(.key != "200") | .value] | add // 0)
               + ([.errorDistribution // {} | to_entries[] | .value] | add // 0)' "$out")
  else
    vals="NA NA NA"; errs=NA; got=NA
  fi
  set -- $vals
  printf '%s\t%s\toha\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$got" "$1" "$2" "$3" "$errs" ${cpu} >>"$TSV"
  log "round $r oha $t: p50 $1 us, p99 $2 us, p99.9 $3 us, achieved $got req/s, errors $errs, steal/idle% $cpu"
}

T0=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for t in "${ACTIVE[@]}"; do run_wrk warmup "$t"; sleep "$COOLDOWN"; done
for ((r = 1; r <= ROUNDS; r++)); do
  for t in "${ACTIVE[@]}"; do run_wrk "$r" "$t"; sleep "$COOLDOWN"; done
  for t in "${ACTIVE[@]}"; do run_oha "$r" "$t"; sleep "$COOLDOWN"; done
done
ELAPSED=$(($(date +%s) - T0))

# ---------------------------------------------------------------- report
# Summary: medians across rounds; "x direct" is the median of per-round ratios
# (each round's proxy run paired with the same round's direct run), which is
# what interleaving buys; spread = (max - min) / median.
summary() {
  awk -F'\t' -v order="${ACTIVE[*]}" '
  function med(s,   a, n, i, j, x) {
    n = split(s, a, " "); if (n == 0) return "NA"
    for (i = 2; i <= n; i++) { x = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > x; j--) a[j+1] = a[j]; a[j+1] = x }
    return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
  }
  function mn(s,  a, n, i, m) { n = split(s, a, " "); m = a[1] + 0; for (i = 2; i <= n; i++) if (a[i] + 0 < m) m = a[i] + 0; return m }
  function mx(s,  a, n, i, m) { n = split(s, a, " "); m = a[1] + 0; for (i = 2; i <= n; i++) if (a[i] + 0 > m) m = a[i] + 0; return m }
  function add(k, v) { if (v != "" && v != "NA") L[k] = L[k] " " v }
  function spread(s,  m) { m = med(s); if (s == "" || m == 0) return "NA"; return sprintf("%.1f%%", 100 * (mx(s) - mn(s)) / m) }
  function f0(x) { return (x == "NA" || x == "") ? "NA" : sprintf("%.0f", x) }
  function f2(x) { return (x == "NA" || x == "") ? "NA" : sprintf("%.2f", x) }
  NR == 1 { next }
  {
    r = $1; t = $2
    if ($3 == "wrk") { add(t SUBSEP "rps", $4); rps[t, r] = $4 }
    else { add(t SUBSEP "p50", $5); add(t SUBSEP "p99", $6); add(t SUBSEP "p999", $7); p50[t, r] = $5; p99[t, r] = $6 }
    if ($8 != "NA") err[t] += $8; else err[t] = "NA"
    R[r] = 1
  }
  END {
    nt = split(order, T, " ")
    for (i = 1; i <= nt; i++) { t = T[i]
      for (r in R) {
        if (rps[t, r] != "" && rps[t, r] != "NA" && rps["direct", r] > 0) add(t SUBSEP "xrps", rps[t, r] / rps["direct", r])
        if (rps[t, r] != "" && rps[t, r] != "NA" && rps["nginx", r] > 0) add(t SUBSEP "xngx", rps[t, r] / rps["nginx", r])
        if (rps[t, r] != "" && rps[t, r] != "NA" && rps["haproxy", r] > 0) add(t SUBSEP "xhap", rps[t, r] / rps["haproxy", r])
        if (p50[t, r] != "" && p50[t, r] != "NA" && p50["direct", r] != "" && p50["direct", r] != "NA") add(t SUBSEP "d50", p50[t, r] - p50["direct", r])
        if (p99[t, r] != "" && p99[t, r] != "NA" && p99["direct", r] != "" && p99["direct", r] != "NA") add(t SUBSEP "d99", p99[t, r] - p99["direct", r])
      }
    }
    print "| target | req/s (median) | req/s min-max (spread) | req/s x direct | req/s x nginx | req/s x haproxy | p50 us | p99 us | p99.9 us | p99 min-max (spread) | +p50 us vs direct | +p99 us vs direct | errors |"
    print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for (i = 1; i <= nt; i++) { t = T[i]
      k = t SUBSEP
      printf "| %s | %s | %s-%s (%s) | %s | %s | %s | %s | %s | %s | %s-%s (%s) | %s | %s | %s |\n", t,
        f0(med(L[k "rps"])), f0(mn(L[k "rps"])), f0(mx(L[k "rps"])), spread(L[k "rps"]),
        f2(med(L[k "xrps"])), (("nginx" SUBSEP "rps") in L) ? f2(med(L[k "xngx"])) : "NA",
        (("haproxy" SUBSEP "rps") in L) ? f2(med(L[k "xhap"])) : "NA",
        f0(med(L[k "p50"])), f0(med(L[k "p99"])), f0(med(L[k "p999"])),
        f0(mn(L[k "p99"])), f0(mx(L[k "p99"])), spread(L[k "p99"]),
        (t == "direct") ? "-" : f0(med(L[k "d50"])), (t == "direct") ? "-" : f0(med(L[k "d99"])), err[t]
    }
  }' "$TSV"
}

per_round() {
  awk -F'\t' '
  NR == 1 { next }
  $3 == "wrk" { w[$1, $2] = $4 "\t" $8 "\t" $9 "\t" $10; if (!(($1, $2) in seen)) { seen[$1, $2] = 1; key[++n] = $1 SUBSEP $2 } }
  $3 == "oha" { o[$1, $2] = $5 "\t" $6 "\t" $7 "\t" $4 "\t" $8 "\t" $9; if (!(($1, $2) in seen)) { seen[$1, $2] = 1; key[++n] = $1 SUBSEP $2 } }
  END {
    print "| round | target | wrk req/s | wrk errors | wrk steal% | wrk idle% | oha p50 us | oha p99 us | oha p99.9 us | oha achieved req/s | oha errors | oha steal% |"
    print "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for (i = 1; i <= n; i++) {
      split(key[i], kk, SUBSEP); split(w[key[i]], a, "\t"); split(o[key[i]], b, "\t")
      printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", kk[1], kk[2], a[1], a[2], a[3], a[4], b[1], b[2], b[3], b[4], b[5], b[6]
    }
  }' "$TSV"
}

{
  echo "# Reverse-proxy peers benchmark, $(date '+%F %T %Z')"
  echo
  echo "- host: $(nproc) CPUs ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), kernel $(uname -r), load avg at start $LOAD0"
  echo "- downstream protocol: $PROTO$( [[ $PROTO == h2c ]] && echo " (prior knowledge, $H2_STREAMS stream(s) per connection)" )$( [[ $PROTO == tls ]] && echo " (HTTP/1.1 over TLS, one self-signed ECDSA P-256 certificate for all)" ); upstream leg HTTP/1.1 cleartext keep-alive"
  echo "- mode: $MODE; upstream nginx workers: $UPSTREAM_WORKERS; proxy threads/workers: $PROXY_THREADS; nginx proxy reuseport: $NGINX_REUSEPORT"
  echo "- upstream: nginx \`return 200\` with a ${#UP_BODY}-byte JSON body on 127.0.0.1:$UP_PORT; request \`GET $BENCH_PATH\`"
  echo "- versions: $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v 2>&1 | head -1 | awk '{print "HAProxy " $3}'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}'), $("$OHA" --version 2>/dev/null | head -1)${HANDOVER_BIN:+, handover at $HANDOVER_BIN}${HANDOVER_BIN_B:+, handover-b at $HANDOVER_BIN_B}"
  echo "- rounds: $ROUNDS, interleaved (${ACTIVE[*]}), one discarded $WARMUP wrk warm-up per target; wall time of the measurement $ELAPSED s"
  echo "- closed loop: \`${LG[*]:+${LG[*]} }${WRK_CMD[*]} URL\`"
  echo "- open loop: \`${LG[*]:+${LG[*]} }oha ${OHA_CMD[*]:1} URL\`"
  echo "- URL: direct $SCHEME://127.0.0.1:$DIRECT_PORT, nginx :$NGX_PORT, haproxy :$HAP_PORT, handover :$HO_PORT${HANDOVER_BIN_B:+, handover-b :$HOB_PORT}, path $BENCH_PATH"
  for n in "${NOTES[@]}"; do echo "- NOTE: $n"; done
  echo
  echo "## Summary (medians across rounds)"
  echo
  summary
  echo
  echo "req/s x direct / x nginx / x haproxy: median of per-round ratios (each run paired with the same round's reference run)."
  echo "+p50/+p99: median of per-round differences to direct (added latency of the hop). Latency is oha's, corrected for coordinated omission."
  echo "spread = (max - min) / median across rounds. steal% / idle%: whole-machine /proc/stat deltas during the run."
  if [[ " ${ACTIVE[*]} " == *" handover-b "* && " ${ACTIVE[*]} " == *" handover "* ]]; then
    echo
    echo "## A/B: handover-b x handover (wrk req/s, per round)"
    echo
    awk -F'\t' '$3 == "wrk" && $1 != "warmup" { r[$1, $2] = $4; R[$1] = 1 }
      END { for (i in R) if (r[i, "handover"] > 0 && r[i, "handover-b"] > 0) printf "- round %s: %.2f\n", i, r[i, "handover-b"] / r[i, "handover"] }' "$TSV" | sort
  fi
  echo
  echo "## Per round"
  echo
  per_round
  echo
  echo "Raw outputs: \`${RAW#"$HERE"/}/\` (wrk text, oha JSON, configs)."
} >"$RESULTS"

echo
cat "$RESULTS"
log "wrote $RESULTS (measurement wall time ${ELAPSED}s)"
