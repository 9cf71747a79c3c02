#!/usr/bin/env bash
# setup.sh: installs every tool the benchmarks in benches/ need, from
# Debian's packages or crates.io. Idempotent: a tool already present is
# left alone, so a second run installs nothing and takes a second.
#
#   bash benches/setup.sh            # everything
#   SKIP_OHA=1 bash benches/setup.sh # no cargo install (oha takes ~3 min to build)
#
# Debian (apt-get, as root):
#   nginx-light      upstream and peer proxy (HTTP/1.1, h2c, TLS with OpenSSL)
#   haproxy          peer proxy
#   wrk              closed-loop HTTP/1.1 load
#   nghttp2-client   h2load: closed-loop HTTP/2 load (h2c prior knowledge, h2 over TLS)
#   jq curl openssl  results, readiness, the self-signed certificate
#   linux-perf       perf stat / perf record / perf trace (software events)
#   strace           syscall counts (strace -c -f)
#   valgrind         callgrind (instruction counts) and dhat (allocations)
#   util-linux iproute2 procps  taskset, ss, ps
# crates.io:
#   oha              open-loop load with latency correction. Debian 12 has no
#                    package (`apt-cache policy oha`: none), so
#                    `cargo install oha --locked --version $OHA_VERSION`.
set -euo pipefail

OHA_VERSION=${OHA_VERSION:-1.16.0}
SKIP_OHA=${SKIP_OHA:-0}

log() { printf '[setup] %s\n' "$*" >&2; }

# command -> Debian package providing it
declare -A PKG=(
    [nginx]=nginx-light
    [haproxy]=haproxy
    [wrk]=wrk
    [h2load]=nghttp2-client
    [jq]=jq
    [curl]=curl
    [openssl]=openssl
    [perf]=linux-perf
    [strace]=strace
    [valgrind]=valgrind
    [taskset]=util-linux
    [ss]=iproute2
    [ps]=procps
)

missing=()
for cmd in "${!PKG[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG[$cmd]}")
done
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing from Debian: ${missing[*]}"
    SUDO=()
    [[ $(id -u) == 0 ]] || SUDO=(sudo)
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    # The packages' own services are not wanted: the benchmarks start their
    # own instances under private prefixes.
    for svc in nginx haproxy; do
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
            "${SUDO[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
        fi
    done
else
    log "Debian tools present"
fi

if [[ $SKIP_OHA != 1 ]]; then
    if command -v oha >/dev/null 2>&1 || [[ -x $HOME/.cargo/bin/oha ]]; then
        log "oha present: $({ command -v oha || echo "$HOME/.cargo/bin/oha"; } | head -1)"
    else
        log "installing oha $OHA_VERSION from crates.io (cargo install --locked)"
        cargo install oha --locked --version "$OHA_VERSION" >&2
    fi
fi

# perf needs the kernel to allow it for tracepoints and per-process counting.
if [[ -r /proc/sys/kernel/perf_event_paranoid ]]; then
    p=$(cat /proc/sys/kernel/perf_event_paranoid)
    if ((p > 1)) && [[ $(id -u) == 0 ]]; then
        log "perf_event_paranoid=$p; root bypasses it, leaving it as is"
    fi
fi

for cmd in nginx haproxy wrk h2load jq curl openssl perf strace valgrind taskset; do
    command -v "$cmd" >/dev/null 2>&1 || { log "still missing: $cmd"; exit 1; }
done
log "ok: $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v 2>&1 | head -1 | awk '{print "HAProxy " $3}'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}'), $(h2load --version 2>&1 | head -1), $({ command -v oha || echo "$HOME/.cargo/bin/oha"; } | head -1)"
