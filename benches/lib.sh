# Shared by benches/trigger_write.sh, benches/target_down.sh and
# benches/cutover.sh: build, ports, the Connect2id emulators, a generated
# handover config, processes stopped by PID on exit, machine facts.
# Sourced, not run. The caller has `set -euo pipefail`, is in the crate's
# root, and sets BENCH_NAME (for log lines) and WORK (a temp dir) first.

bench_log() { printf '[%s] %s\n' "${BENCH_NAME:-bench}" "$*" >&2; }
bench_die() {
    bench_log "error: $*"
    exit 1
}

for tool in jq curl openssl awk; do
    command -v "$tool" >/dev/null || bench_die "$tool is required"
done

# ---------------------------------------------------------------- processes

# Every process started here; stopped (TERM, by PID) on exit.
PIDS=()
bench_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -CONT "$pid" 2>/dev/null || true # a SIGSTOPped target
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    if [[ ${KEEP_TMP:-0} != 1 && -n ${WORK:-} ]]; then
        rm -rf "$WORK"
    fi
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# Forgets a process that ended by itself.
bench_forget() {
    local keep=() p
    for p in "${PIDS[@]}"; do
        [[ $p == "$1" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# Stops one process started here (by PID) and forgets it.
bench_stop() {
    kill -CONT "$1" 2>/dev/null || true
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    bench_forget "$1"
}

# ---------------------------------------------------------------- build

# Sets HANDOVER (the release binary) and LOADGEN (the load generator).
bench_build() {
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        bench_log "building handover and the load generator (release)"
        cargo build --release --locked --bin handover --bench loadgen >&2
    fi
    HANDOVER=$PWD/target/release/handover
    if [[ ${SKIP_BUILD:-0} == 1 ]]; then
        # The newest one built; asking cargo would rebuild it (and the
        # library) after any change to src/.
        LOADGEN=$(find target/release/deps -maxdepth 1 -name 'loadgen-*' -type f -executable \
            -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -n 1 | cut -d' ' -f2-)
        [[ -z $LOADGEN ]] || LOADGEN=$PWD/$LOADGEN
    else
        LOADGEN=$(cargo bench --locked --bench loadgen --no-run --message-format=json 2>/dev/null |
            sed -n 's/.*"executable":"\([^"]*loadgen[^"]*\)".*/\1/p' | tail -n 1)
    fi
    [[ -x $HANDOVER ]] || bench_die "$HANDOVER missing"
    [[ -x $LOADGEN ]] || bench_die "cannot find the loadgen executable"
}

# ---------------------------------------------------------------- ports

# A free TCP port on 127.0.0.1 (nothing answers a connect to it), below the
# kernel's ephemeral range (ip_local_port_range, 32768 and up by default),
# so that no client connection of the benchmark holds it as its local port
# by the time the server binds it.
free_port() {
    local port low=20000 high
    high=$(awk '{ print $1 - 1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32767)
    ((high > low)) || high=60000
    for port in $(shuf -i "$low-$high" -n 100); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    bench_die "no free port"
}

# ---------------------------------------------------------------- emulators

# start_emulator NAME TOKEN LISTEN [EXTRA ARGS...]: a Connect2id emulator
# under /c2id sharing the JWK set $WORK/jwks.json (the first one creates
# it). Sets EMU_PID and EMU_ADDR; the log is $WORK/NAME.log.
start_emulator() {
    local name=$1 token=$2 listen=$3
    shift 3
    local logfile=$WORK/$name.log
    : >"$logfile"
    "$HANDOVER" --log-format json emulate --kind connect2id --listen "$listen" \
        --api-token "$token" --base-path /c2id --jwks "$WORK/jwks.json" "$@" \
        2>>"$logfile" >/dev/null &
    EMU_PID=$!
    PIDS+=("$EMU_PID")
    local i addr=""
    for i in $(seq 1 600); do
        addr=$(jq -r 'select(.message == "connect2id emulator listening") | .addr' "$logfile" 2>/dev/null | tail -n 1)
        [[ -z $addr ]] || break
        kill -0 "$EMU_PID" 2>/dev/null || bench_die "emulator $name exited: $(tail -n 3 "$logfile")"
        sleep 0.1
    done
    [[ -n $addr ]] || bench_die "emulator $name did not start: $(tail -n 3 "$logfile")"
    EMU_ADDR=$addr
}

# start_authlete NAME TOKEN [EXTRA ARGS...]: an Authlete emulator (v3 API,
# service AUTHLETE_SERVICE_ID) on a free port. Sets EMU_PID and EMU_ADDR;
# the log is $WORK/NAME.log.
AUTHLETE_SERVICE_ID=715948317
start_authlete() {
    local name=$1 token=$2
    shift 2
    local logfile=$WORK/$name.log
    : >"$logfile"
    "$HANDOVER" --log-format json emulate --kind authlete --listen 127.0.0.1:0 \
        --api-token "$token" --service-id "$AUTHLETE_SERVICE_ID" "$@" 2>>"$logfile" >/dev/null &
    EMU_PID=$!
    PIDS+=("$EMU_PID")
    local i addr=""
    for i in $(seq 1 600); do
        addr=$(jq -r 'select(.message == "started the authlete emulator") | .addr' "$logfile" 2>/dev/null | tail -n 1)
        [[ -z $addr ]] || break
        kill -0 "$EMU_PID" 2>/dev/null || bench_die "emulator $name exited: $(tail -n 3 "$logfile")"
        sleep 0.1
    done
    [[ -n $addr ]] || bench_die "emulator $name did not start: $(tail -n 3 "$logfile")"
    EMU_ADDR=$addr
}

# start_emulators [SOURCE EXTRA ARGS...]: the source and the (empty) target
# emulator of a stack, on free ports. BENCH_ISSUER (environment) gives both
# the same issuer, as a migration does: self-contained access tokens of the
# source are then valid at the target (the cutover's key-parity check). Sets SOURCE_PID, SOURCE_ADDR,
# TARGET_PID and TARGET_ADDR.
start_emulators() {
    # SOURCE_SWITCHES: the same for the source (a source that does not
    # mint a new secret on every client update, e.g.
    # '{"always_refresh_client_secret_on_update":false}').
    start_emulator source "$HANDOVER_SOURCE_TOKEN" 127.0.0.1:0 ${BENCH_ISSUER:+--issuer "$BENCH_ISSUER"} \
        ${SOURCE_SWITCHES:+--switches "$SOURCE_SWITCHES"} "$@"
    SOURCE_PID=$EMU_PID SOURCE_ADDR=$EMU_ADDR
    # TARGET_SWITCHES: the target's configuration as a JSON object of
    # emulator switches, e.g. '{"always_refresh_client_secret_on_update":false}'
    # for a target set up as the README asks (op.reg.alwaysRefreshClientSecretOnUpdate=false).
    start_emulator target "$HANDOVER_TARGET_TOKEN" 127.0.0.1:0 ${BENCH_ISSUER:+--issuer "$BENCH_ISSUER"} \
        ${TARGET_SWITCHES:+--switches "$TARGET_SWITCHES"}
    TARGET_PID=$EMU_PID TARGET_ADDR=$EMU_ADDR
}

# bench_begin: what every stack benchmark does first: build, create
# $RESULTS with the machine's facts, make the secrets and the trigger
# request.
bench_begin() {
    bench_build
    mkdir -p "$RESULTS"
    machine_facts "$WORK" >"$RESULTS/machine.json"
    bench_log "results in $RESULTS"
    bench_secrets
    trigger_args
}

# ---------------------------------------------------------------- handover

# write_config FILE PROXY_PORT ADMIN_PORT SOURCE_ADDR TARGET_ADDR JOURNAL_DIR SYNC [EXTRA TOML]
# TARGET_KIND=authlete (environment) writes an Authlete v3 target instead
# (TARGET_ADDR is then an Authlete emulator) with the default datasets.
write_config() {
    local file=$1 proxy_port=$2 admin_port=$3 src=$4 tgt=$5 journal=$6 sync=$7 extra=${8:-}
    mkdir -p "$journal"
    cat >"$file" <<EOF
# Generated by benches/${BENCH_NAME:-bench}.sh
[proxy]
listen = "127.0.0.1:$proxy_port"

[admin]
listen = "127.0.0.1:$admin_port"
token_env = "HANDOVER_ADMIN_TOKEN"

[source]
kind = "connect2id"
url = "http://$src/c2id"
token_env = "HANDOVER_SOURCE_TOKEN"

$(target_block "$tgt")

[journal]
dir = "$journal"
payload_key_env = "HANDOVER_JOURNAL_KEY"
sync = "$sync"

[sync]
$([[ ${TARGET_KIND:-connect2id} == authlete ]] || echo 'datasets = ["clients", "authorizations", "sessions"]')
$extra
EOF
}

# The [target] table of write_config, by TARGET_KIND.
target_block() {
    case ${TARGET_KIND:-connect2id} in
    connect2id)
        printf '[target]\nkind = "connect2id"\nurl = "http://%s/c2id"\ntoken_env = "HANDOVER_TARGET_TOKEN"\n' "$1"
        ;;
    authlete)
        printf '[target]\nkind = "authlete"\nurl = "http://%s"\napi_version = 3\nservice_id = "%s"\naccess_token_env = "HANDOVER_TARGET_TOKEN"\n' \
            "$1" "$AUTHLETE_SERVICE_ID"
        ;;
    *) bench_die "TARGET_KIND must be connect2id or authlete, not $TARGET_KIND" ;;
    esac
}

# start_handover NAME CONFIG ADMIN_URL: sets HANDOVER_PID once /livez answers.
start_handover() {
    local name=$1 config=$2 admin=$3
    "$HANDOVER" --log-format json serve -c "$config" 2>"$WORK/$name.log" >/dev/null &
    HANDOVER_PID=$!
    PIDS+=("$HANDOVER_PID")
    local i
    for i in $(seq 1 200); do
        curl -fs "$admin/livez" >/dev/null 2>&1 && return
        kill -0 "$HANDOVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    bench_die "handover $name did not start: $(tail -n 3 "$WORK/$name.log")"
}

# Fresh tokens and journal key for every process started afterwards.
bench_secrets() {
    HANDOVER_SOURCE_TOKEN=source-$(openssl rand -hex 8)
    HANDOVER_TARGET_TOKEN=target-$(openssl rand -hex 8)
    HANDOVER_ADMIN_TOKEN=admin-$(openssl rand -hex 16)
    HANDOVER_JOURNAL_KEY=$(openssl rand -hex 32)
    export HANDOVER_SOURCE_TOKEN HANDOVER_TARGET_TOKEN HANDOVER_ADMIN_TOKEN HANDOVER_JOURNAL_KEY
}

# The trigger every benchmark sends: a client registration (`POST /clients`
# with the master token, 201 with the new client_id; the proxy journals
# `client:<id>` and the sync copies it). Cheap at the emulator. Usage:
# loadgen open-loop --url "http://ADDR$TRIGGER_PATH" "${TRIGGER_ARGS[@]}" ...
TRIGGER_PATH=/c2id/clients
trigger_args() {
    TRIGGER_ARGS=(--method POST
        --header "Authorization: Bearer $HANDOVER_SOURCE_TOKEN"
        --header "Content-Type: application/json"
        --body '{"redirect_uris":["https://rp.example.com/cb"],"client_name":"bench"}')
}

# ---------------------------------------------------------------- the mix

# A mix of trigger writes for `loadgen --mix` (benches/distance.sh, and
# benches/cutover.sh with MIX=1), all through the proxy to the Connect2id
# source; weights out of 10:
#   1 client_register  POST /clients (a new client)
#   1 client_update    PUT /clients/ID, one of MIX_CLIENTS prepared clients
#   3 login            POST /authz-store/rest/v3/authorizations?return=tokens:
#                      a long-lived consent for a new subject, tokens issued
#                      (what a login's consent step persists)
#   2 refresh          POST /token, grant_type=refresh_token, one of
#                      MIX_TOKENS prepared long-lived refresh tokens, NOT
#                      rotated (a request template cannot follow rotation)
#   3 session_create   POST /session-store/rest/v2/sessions (a new SID)
MIX_CLIENTS=${MIX_CLIENTS:-200}
MIX_TOKENS=${MIX_TOKENS:-200}
MIX_NAMES="client_register client_update login refresh session_create"

# mix_prepare DIR PROXY_URL: registers the clients and mints the refresh
# tokens the mix uses, through the proxy (so the sync copies them); writes
# DIR/mix-tokens.txt and sets MIX_TAG and MIX_RT_AUTH.
mix_prepare() {
    local dir=$1
    MIX_TAG=$(openssl rand -hex 3)
    local secret
    secret=$(openssl rand -hex 20)
    MIX_RT_AUTH="Basic $(printf '%s' "bench-$MIX_TAG-rt:$secret" | base64 -w0)"
    MIX_PROXY=$2
    MIX_GRANTS='"grant_types":["authorization_code","refresh_token"],"response_types":["code"],"redirect_uris":["https://rp.example.com/cb"]'
    export MIX_TAG MIX_PROXY MIX_GRANTS HANDOVER_SOURCE_TOKEN
    curl -fsS -o /dev/null -X POST -H "Authorization: Bearer $HANDOVER_SOURCE_TOKEN" \
        -H 'Content-Type: application/json' \
        --data "{\"preferred_client_id\":\"bench-$MIX_TAG-rt\",\"preferred_client_secret\":\"$secret\",$MIX_GRANTS}" \
        "$MIX_PROXY/c2id/clients" || bench_die "cannot register the mix's refresh client through $MIX_PROXY"
    # shellcheck disable=SC2016 # expanded by the inner shell
    seq 0 $((MIX_CLIENTS - 1)) | xargs -P 8 -I@ sh -c \
        'curl -fsS -o /dev/null -X POST -H "Authorization: Bearer $HANDOVER_SOURCE_TOKEN" -H "Content-Type: application/json" --data "{\"preferred_client_id\":\"bench-$MIX_TAG-c@\",$MIX_GRANTS}" "$MIX_PROXY/c2id/clients"' ||
        bench_die "cannot register the mix's $MIX_CLIENTS clients through $MIX_PROXY"
    # shellcheck disable=SC2016
    seq 0 $((MIX_TOKENS - 1)) | xargs -P 8 -I@ sh -c \
        'curl -fsS -X POST -H "Authorization: Bearer $HANDOVER_SOURCE_TOKEN" -H "Content-Type: application/json" --data "{\"sub\":\"rt-$MIX_TAG-@\",\"cid\":\"bench-$MIX_TAG-rt\",\"scp\":[\"openid\"],\"irt\":true,\"rtr\":false}" "$MIX_PROXY/c2id/authz-store/rest/v3/authorizations?return=tokens"; echo' |
        jq -r '.refresh_token // empty' >"$dir/mix-tokens.txt" ||
        bench_die "cannot mint the mix's refresh tokens through $MIX_PROXY"
    local n
    n=$(wc -l <"$dir/mix-tokens.txt")
    ((n == MIX_TOKENS)) || bench_die "minted $n of $MIX_TOKENS refresh tokens (is the refresh_token grant allowed?)"
}

# mix_write FILE STEP: the mix for one run (after mix_prepare, whose tokens
# file must be beside FILE); STEP makes the run's new subjects unique.
mix_write() {
    local file=$1 step=$2 dir
    dir=$(cd "$(dirname "$file")" && pwd)
    jq -n --arg tag "$MIX_TAG-$step" --arg ctag "$MIX_TAG" --arg clients "$MIX_CLIENTS" \
        --arg bearer "Authorization: Bearer $HANDOVER_SOURCE_TOKEN" --arg json "Content-Type: application/json" \
        --arg rt "Authorization: $MIX_RT_AUTH" --arg tokens "$dir/mix-tokens.txt" '[
        {name: "client_register", weight: 1, method: "POST", path: "/c2id/clients", headers: [$bearer, $json],
         body: "{\"redirect_uris\":[\"https://rp.example.com/cb\"],\"client_name\":\"bench\"}"},
        {name: "client_update", weight: 1, method: "PUT", path: "/c2id/clients/bench-\($ctag)-c{seq%\($clients)}",
         headers: [$bearer, $json],
         body: "{\"client_id\":\"bench-\($ctag)-c{seq%\($clients)}\",\"redirect_uris\":[\"https://rp.example.com/cb\"],\"grant_types\":[\"authorization_code\",\"refresh_token\"],\"response_types\":[\"code\"],\"client_name\":\"bench update {seq}\"}"},
        {name: "login", weight: 3, method: "POST", path: "/c2id/authz-store/rest/v3/authorizations?return=tokens",
         headers: [$bearer, $json],
         body: "{\"sub\":\"u-\($tag)-{seq}\",\"cid\":\"bench-\($ctag)-c{seq%\($clients)}\",\"scp\":[\"openid\",\"email\"],\"irt\":true}"},
        {name: "refresh", weight: 2, method: "POST", path: "/c2id/token", lines: $tokens,
         headers: [$rt, "Content-Type: application/x-www-form-urlencoded"],
         body: "grant_type=refresh_token&refresh_token={line}"},
        {name: "session_create", weight: 3, method: "POST", path: "/c2id/session-store/rest/v2/sessions",
         headers: [$bearer, $json], body: "{\"sub\":\"u-\($tag)-{seq}\",\"auth_life\":43200}"}
    ]' >"$file"
}

# ---------------------------------------------------------------- facts

machine_facts() {
    jq -n \
        --arg date "$(date -u +%FT%TZ)" \
        --arg cpu "$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)" \
        --arg nproc "$(nproc)" \
        --arg mem "$(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)" \
        --arg kernel "$(uname -r)" \
        --arg disk "$(df -T "${1:-/tmp}" | awk 'NR == 2 {print $1 " " $2}')" \
        --arg commit "$(git rev-parse --short HEAD 2>/dev/null)" \
        --arg dirty "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l)" \
        --arg uptime "$(uptime)" \
        '{date: $date, cpu: $cpu, nproc: ($nproc|tonumber), memory: $mem, kernel: $kernel,
          journal_disk: $disk, commit: $commit, src_dirty_files: ($dirty|tonumber), uptime: $uptime}'
}
