#!/usr/bin/env bash
# Fleet benchmark (issue 15): trigger-write added latency (p50/p99) and
# sustained trigger writes/s with the PostgreSQL store against the local
# journal (`[journal] sync = "always"`), for 1, 2 and 3 instances, in one
# run. What and why: benches/README.md, section 9.
#
# Against one source and one target emulator:
#   direct       the generator talks to the source emulator;
#   local-N      N handover instances, each with its own local journal
#                (sync = "always": fdatasync before the response);
#   postgres-N   N handover instances sharing one PostgreSQL store (a
#                throwaway cluster started here, fsync and
#                synchronous_commit on: a commit is durable before the
#                response, like the local journal's fdatasync).
# The load is spread evenly over the N instances: N generators, each
# with 1/N of the rate (open loop) or of the connections (closed loop).
# The trigger is a client registration (benches/lib.sh, TRIGGER_ARGS).
# Open-loop percentiles are exact over the N generators' timelines.
#
#   bash benches/fleet.sh                     # ~11 minutes
#   ROUNDS=1 DURATION=8 bash benches/fleet.sh
#
# Knobs (environment):
#   ROUNDS=2             every configuration is measured this many times,
#                        in a rotated order
#   RATE=300             open-loop writes/s in all (split over instances)
#   DURATION=15 WARMUP=3 open-loop measured / warm-up seconds
#   CL_DURATION=8 CL_WARMUP=2   closed-loop measured / warm-up seconds
#   OL_CONNECTIONS=30 CL_CONNECTIONS=48   in all (split over instances)
#   COUNTS="1 2 3"       instance counts
#   STORES="local postgres"
#   DRAIN_TIMEOUT_S=300  after each closed loop, wait this long at most
#                        for the journal(s) to drain
#   JOURNAL_PARENT=${TMPDIR:-/tmp}  journals and the cluster's data
#   SKIP_BUILD=0 KEEP_TMP=0
#   RESULTS=benches/results/fleet-<timestamp>
#
# Everything started here is stopped on exit (trap): processes by PID,
# the PostgreSQL cluster with pg_ctl.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
RATE=${RATE:-300}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
CL_DURATION=${CL_DURATION:-8}
CL_WARMUP=${CL_WARMUP:-2}
OL_CONNECTIONS=${OL_CONNECTIONS:-30}
CL_CONNECTIONS=${CL_CONNECTIONS:-48}
COUNTS=${COUNTS:-"1 2 3"}
STORES=${STORES:-"local postgres"}
DRAIN_TIMEOUT_S=${DRAIN_TIMEOUT_S:-300}
JOURNAL_PARENT=${JOURNAL_PARENT:-${TMPDIR:-/tmp}}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=${RESULTS:-benches/results/fleet-$STAMP}
BENCH_NAME=fleet
WORK=$(mktemp -d "$JOURNAL_PARENT/handover-fleet.XXXXXX")
# shellcheck source=benches/lib.sh
source benches/lib.sh

read -ra COUNT_LIST <<<"$COUNTS"
read -ra STORE_LIST <<<"$STORES"
MAX_N=0
for n in "${COUNT_LIST[@]}"; do ((n > MAX_N)) && MAX_N=$n; done

# ---------------------------------------------------------------- PostgreSQL

PG_BIN=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
[[ -x $PG_BIN/initdb ]] || bench_die "no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)"
# initdb refuses to run as root: the cluster runs as postgres then.
as_pg() {
    if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
PG_DIR=$WORK/pg
PG_UP=0
fleet_cleanup() {
    if [[ $PG_UP == 1 ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -w stop -m fast >/dev/null 2>&1 || true
    fi
    bench_cleanup
}
trap fleet_cleanup EXIT

bench_begin

start_cluster() {
    mkdir -p "$PG_DIR"
    chmod 755 "$WORK"
    [[ $(id -u) != 0 ]] || chown -R postgres: "$PG_DIR"
    as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres >"$WORK/initdb.log" 2>&1 ||
        bench_die "initdb failed: $(tail -n 3 "$WORK/initdb.log")"
    PG_PORT=$(free_port)
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
        -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1" start >/dev/null ||
        bench_die "PostgreSQL did not start: $(tail -n 3 "$PG_DIR/log")"
    PG_UP=1
    PG_PID=$(head -n 1 "$PG_DIR/data/postmaster.pid")
    as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres bench
    HANDOVER_STORE_URL="host=127.0.0.1 port=$PG_PORT user=postgres dbname=bench sslmode=disable"
    export HANDOVER_STORE_URL
    bench_log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT (pid $PG_PID), fsync on, synchronous_commit on"
}

# ---------------------------------------------------------------- stack

start_emulators
start_cluster

declare -A URL=() ADMIN=() HPID=()
URL[direct]=http://$SOURCE_ADDR$TRIGGER_PATH
for store in "${STORE_LIST[@]}"; do
    extra=""
    if [[ $store == postgres ]]; then
        extra=$'[store]\nkind = "postgres"\nurl_env = "HANDOVER_STORE_URL"'
    fi
    for i in $(seq 1 "$MAX_N"); do
        name=$store$i
        proxy_port=$(free_port)
        admin_port=$(free_port)
        write_config "$WORK/$name.toml" "$proxy_port" "$admin_port" "$SOURCE_ADDR" "$TARGET_ADDR" \
            "$WORK/journal-$name" always "$extra"
        cp "$WORK/$name.toml" "$RESULTS/handover-$name.toml"
        ADMIN[$name]=http://127.0.0.1:$admin_port
        URL[$name]=http://127.0.0.1:$proxy_port$TRIGGER_PATH
    done
done

# start_instance NAME / stop_instance NAME (SIGTERM: a clean stop, which
# gives its claims back to the fleet at once).
start_instance() {
    [[ -z ${HPID[$1]:-} ]] || return 0
    start_handover "handover-$1" "$WORK/$1.toml" "${ADMIN[$1]}"
    HPID[$1]=$HANDOVER_PID
    "$LOADGEN" wait-ready --url "${URL[$1]%$TRIGGER_PATH}/c2id/jwks.json" >/dev/null
}
stop_instance() {
    [[ -n ${HPID[$1]:-} ]] || return 0
    bench_stop "${HPID[$1]}"
    unset "HPID[$1]"
}

# fleet CONFIG: exactly the configuration's instances of its store run
# (a PostgreSQL fleet shares the sync work among all its live members,
# so an idle extra member would help a smaller fleet); local instances
# are independent and stay up.
fleet() {
    [[ $1 != direct ]] || return 0
    local store=${1%-*} n=${1##*-} i
    for i in $(seq 1 "$MAX_N"); do
        if ((i <= n)); then
            start_instance "$store$i"
        elif [[ $store == postgres ]]; then
            stop_instance "$store$i"
        fi
    done
}

for store in "${STORE_LIST[@]}"; do fleet "$store-$MAX_N"; done
bench_log "source $SOURCE_ADDR (pid $SOURCE_PID), target $TARGET_ADDR (pid $TARGET_PID), handover: $(for k in "${!HPID[@]}"; do printf '%s=%s ' "$k" "${HPID[$k]}"; done)"

# The configurations: direct, then STORE-N.
CONFIGS=(direct)
for store in "${STORE_LIST[@]}"; do
    for n in "${COUNT_LIST[@]}"; do CONFIGS+=("$store-$n"); done
done

# members CONFIG: the instance names of a configuration (none for direct).
members() {
    [[ $1 == direct ]] && return
    local store=${1%-*} n=${1##*-} i
    for i in $(seq 1 "$n"); do echo "$store$i"; done
}

# ---------------------------------------------------------------- CPU

# Clock ticks of user + system time of processes (their waited-for
# children too: PostgreSQL backends that ended, generators).
ticks() {
    local pid total=0 t
    for pid in "$@"; do
        t=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}
# Every process of the cluster: the postmaster and its children.
pg_ticks() {
    # shellcheck disable=SC2046
    ticks "$PG_PID" $(pgrep -P "$PG_PID" || true)
}
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
HZ=$(getconf CLK_TCK)

# snapshot: "machine pg handover... source target" in ticks.
snapshot() {
    local parts=("$(machine_ticks)" "$(pg_ticks)") name
    for name in "${!HPID[@]}"; do parts+=("$name=$(ticks "${HPID[$name]}")"); done
    parts+=("source=$(ticks "$SOURCE_PID")" "target=$(ticks "$TARGET_PID")")
    echo "${parts[*]}"
}

# cpu_json BEFORE AFTER SECONDS GEN_TICKS: cores used per process group
# over the window, and the other programs' load.
cpu_json() {
    local -a b a
    read -ra b <<<"$1"
    read -ra a <<<"$2"
    local secs=$3 gen=$4
    local machine=$((a[0] - b[0])) pg=$((a[1] - b[1])) ours i json="{" key
    ours=$((pg + gen))
    for i in $(seq 2 $((${#a[@]} - 1))); do
        key=${a[$i]%%=*}
        local d=$((${a[$i]#*=} - ${b[$i]#*=}))
        ours=$((ours + d))
        json+="\"$key\":$(awk -v t="$d" -v h="$HZ" -v s="$secs" 'BEGIN { printf "%.2f", t / h / s }'),"
    done
    json+="\"postgres\":$(awk -v t="$pg" -v h="$HZ" -v s="$secs" 'BEGIN { printf "%.2f", t / h / s }'),"
    json+="\"generators\":$(awk -v t="$gen" -v h="$HZ" -v s="$secs" 'BEGIN { printf "%.2f", t / h / s }'),"
    json+="\"other\":$(awk -v t="$((machine - ours))" -v h="$HZ" -v s="$secs" 'BEGIN { v = t / h / s; if (v < 0) v = 0; printf "%.2f", v }')}"
    echo "$json"
}

# ---------------------------------------------------------------- runs

# load MODE CONFIG OUT_PREFIX [ARGS...]: N generators at once, one per
# instance, each with its share of --rate / --connections (given as the
# totals in RATE_TOTAL / CONN_TOTAL). Writes OUT_PREFIX-K.json (and
# .timeline for open loop) and OUT_PREFIX.cpu.json.
load() {
    local mode=$1 config=$2 out=$3
    shift 3
    local names=() name k=0
    if [[ $config == direct ]]; then names=(direct); else mapfile -t names < <(members "$config"); fi
    local n=${#names[@]}
    local conns=$(((CONN_TOTAL + n - 1) / n))
    local before after t0 t1 gen
    before=$(snapshot)
    t0=$(date +%s.%N)
    gen=$(
        for name in "${names[@]}"; do
            k=$((k + 1))
            local extra=()
            [[ $mode != open-loop ]] || extra=(--rate "$(awk -v r="$RATE_TOTAL" -v n="$n" 'BEGIN { printf "%.3f", r / n }')" --timeline "$out-$k.timeline")
            local cpu=()
            [[ $name == direct ]] || cpu=(--cpu-pid "${HPID[$name]}")
            "$LOADGEN" "$mode" --url "${URL[$name]}" "${TRIGGER_ARGS[@]}" "${cpu[@]}" --json \
                --label "config=$config" --label "instance=$name" --connections "$conns" \
                "${extra[@]}" "$@" >"$out-$k.json" &
        done
        wait
        awk '{ print $16 + $17 }' "/proc/$BASHPID/stat"
    )
    t1=$(date +%s.%N)
    after=$(snapshot)
    cpu_json "$before" "$after" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$gen" >"$out.cpu.json"
}

# Exact percentiles of the successful requests over the timelines
# OUT_PREFIX-*.timeline; errors counted.
merge_timelines() {
    awk -F, '!/^#/ { if ($3 == "ok") print $2; else err++ } END { print "E " err + 0 > "/dev/stderr" }' "$1"-*.timeline \
        2>"$1.errors" | sort -n >"$1.lat"
    local count errors
    count=$(wc -l <"$1.lat")
    errors=$(awk '{ print $2 }' "$1.errors")
    awk -v n="$count" -v e="$errors" '
        { v[NR] = $1 }
        END {
            p50 = (n > 0) ? v[int(0.50 * (n - 1)) + 1] : "null"
            p99 = (n > 0) ? v[int(0.99 * (n - 1)) + 1] : "null"
            printf "{\"requests\":%d,\"errors\":%d,\"p50\":%s,\"p99\":%s}\n", n, e, p50, p99
        }' "$1.lat"
    rm -f "$1.lat" "$1.errors"
}

# sample_pg FILE: until killed, every 0.1 s, what each active handover
# session of the database is doing (wait event, or CPU, and the
# statement): where the store's time goes under load.
sample_pg() {
    while :; do
        psql "$HANDOVER_STORE_URL" -XAtc "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') || ' | ' ||
            left(regexp_replace(query, '\s+', ' ', 'g'), 60)
            FROM pg_stat_activity WHERE application_name = 'handover' AND state = 'active'" >>"$1" 2>/dev/null || true
        sleep 0.1
    done
}

# top_samples FILE: the most frequent lines of a sample_pg file, as JSON.
top_samples() {
    sort "$1" | uniq -c | sort -rn | head -n 8 |
        jq -Rn '[inputs | capture("^ *(?<n>[0-9]+) (?<what>.*)$") | {n: (.n | tonumber), what}]'
}

# depth NAME: the journal depth handover NAME reports (the shared depth
# for a PostgreSQL store).
depth() { "$HANDOVER" status --json --admin "${ADMIN[$1]}" | jq -r '.journal.depth'; }

# drain CONFIG: waits until every journal of the configuration is empty;
# prints the seconds it took.
drain() {
    local t0 name d
    t0=$(date +%s.%N)
    for name in $(members "$1"); do
        while :; do
            d=$(depth "$name")
            [[ $d != 0 ]] || break
            if (($(date +%s) - ${t0%.*} > DRAIN_TIMEOUT_S)); then
                bench_log "$name: journal still at depth $d after ${DRAIN_TIMEOUT_S}s"
                break
            fi
            sleep 0.2
        done
    done
    awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'
}

: >"$RESULTS/runs.jsonl"
for round in $(seq 1 "$ROUNDS"); do
    order=()
    n=${#CONFIGS[@]}
    for i in $(seq 0 $((n - 1))); do
        order+=("${CONFIGS[$(((i + round - 1) % n))]}")
    done
    for config in "${order[@]}"; do
        fleet "$config"
        prefix=$RESULTS/r$round-ol-$config
        bench_log "round $round: open loop $RATE/s -> $config ($(cut -d' ' -f1-3 /proc/loadavg))"
        RATE_TOTAL=$RATE CONN_TOTAL=$OL_CONNECTIONS load open-loop "$config" "$prefix" \
            --duration "$DURATION" --warmup "$WARMUP" --label "round=$round"
        ol=$(merge_timelines "$prefix")
        drain "$config" >/dev/null
        prefix=$RESULTS/r$round-cl-$config
        bench_log "round $round: closed loop -> $config"
        sampler=""
        : >"$prefix.pg-samples"
        if [[ $config == postgres-* ]]; then
            sample_pg "$prefix.pg-samples" &
            sampler=$!
        fi
        RATE_TOTAL=0 CONN_TOTAL=$CL_CONNECTIONS load closed-loop "$config" "$prefix" \
            --duration "$CL_DURATION" --warmup "$CL_WARMUP" --label "round=$round"
        if [[ -n $sampler ]]; then
            kill "$sampler" 2>/dev/null || true
            wait "$sampler" 2>/dev/null || true
        fi
        rps=$(jq -s '[.[].achieved_rps] | add | round' "$prefix"-*.json)
        cl_errors=$(jq -s '[.[] | .errors + .timeouts] | add' "$prefix"-*.json)
        first=$(members "$config" | sed -n 1p)
        left=0
        [[ -z $first ]] || left=$(depth "$first")
        secs=$(drain "$config")
        bench_log "round $round: $config: $rps writes/s, depth $left after the closed loop, drained in ${secs}s"
        jq -nc --arg round "$round" --arg config "$config" --argjson ol "$ol" \
            --argjson ol_cpu "$(cat "$RESULTS/r$round-ol-$config.cpu.json")" \
            --argjson rps "$rps" --argjson cl_errors "$cl_errors" \
            --argjson cl_cpu "$(cat "$prefix.cpu.json")" \
            --argjson pg_samples "$(top_samples "$prefix.pg-samples")" \
            --arg left "$left" --arg secs "$secs" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
            '{round: ($round|tonumber), config: $config, open_loop: $ol, open_loop_cpu: $ol_cpu,
              closed_loop_rps: $rps, closed_loop_errors: $cl_errors, closed_loop_cpu: $cl_cpu,
              depth_after_closed_loop: ($left|tonumber), drain_s: ($secs|tonumber), loadavg: $load,
              store_sessions_closed_loop: $pg_samples}' \
            >>"$RESULTS/runs.jsonl"
    done
done

# Nothing stuck: every journal is empty, no dead letters.
for store in "${STORE_LIST[@]}"; do fleet "$store-$MAX_N"; done
for name in "${!HPID[@]}"; do
    "$HANDOVER" status --json --admin "${ADMIN[$name]}" >"$RESULTS/status-$name.json" || true
done

# ---------------------------------------------------------------- summary

jq -s --slurpfile machine "$RESULTS/machine.json" -f <(
    cat <<'JQ'
def r1: . * 10 | round / 10;
def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
            else (.[length / 2 - 1] + .[length / 2]) / 2 end;
. as $runs
| [$runs[] | select(.config != "direct") as $p
   | ($runs[] | select(.config == "direct" and .round == $p.round)) as $d
   | {round: $p.round, config: $p.config,
      added_p50: ($p.open_loop.p50 - $d.open_loop.p50), added_p99: ($p.open_loop.p99 - $d.open_loop.p99),
      errors: ($p.open_loop.errors + $p.closed_loop_errors), rps: $p.closed_loop_rps}] as $added
| ([$runs[].config] | unique) as $configs
| {
  machine: $machine[0],
  runs: $runs,
  added: $added,
  median: [$configs[] as $c
    | [$runs[] | select(.config == $c)] as $g
    | [$added[] | select(.config == $c)] as $a
    | {config: $c, rounds: ($g | length),
       p50: ([$g[].open_loop.p50] | median), p99: ([$g[].open_loop.p99] | median),
       added_p50: ([$a[].added_p50] | median), added_p99: ([$a[].added_p99] | median),
       rps: ([$g[].closed_loop_rps] | median),
       errors: ([$g[] | .open_loop.errors + .closed_loop_errors] | add)}]
}
| . as $s
| ($s.median | map({key: .config, value: .}) | from_entries) as $m
| .verdicts = {
    added_p99: [$s.median[] | select(.config | startswith("postgres-")) as $p
      | ($m["local-" + ($p.config | ltrimstr("postgres-"))]) as $l
      | select($l != null)
      | {instances: ($p.config | ltrimstr("postgres-") | tonumber),
         postgres_added_p99: $p.added_p99, local_added_p99: $l.added_p99,
         budget: ($l.added_p99 + 1000),
         verdict: (if $p.added_p99 <= $l.added_p99 + 1000 then "MET" else "MISSED" end)}],
    scaling: (if $m["postgres-1"] != null and $m["postgres-3"] != null then
      {postgres_1: $m["postgres-1"].rps, postgres_3: $m["postgres-3"].rps,
       ratio: ($m["postgres-3"].rps / $m["postgres-1"].rps | . * 100 | round / 100),
       local_ratio: (if $m["local-1"] != null and $m["local-3"] != null
                     then ($m["local-3"].rps / $m["local-1"].rps | . * 100 | round / 100) else null end),
       verdict: (if $m["postgres-3"].rps >= 2 * $m["postgres-1"].rps then "MET" else "MISSED" end)}
      else null end)
  }
JQ
) "$RESULTS/runs.jsonl" >"$RESULTS/summary.json"

{
    echo
    echo "== fleet: trigger write (POST /c2id/clients), $(jq -r '.machine | "\(.nproc) x \(.cpu), kernel \(.kernel), journals on \(.journal_disk), commit \(.commit)"' "$RESULTS/summary.json")"
    echo "open loop $RATE writes/s in all over the instances, $OL_CONNECTIONS connections; closed loop $CL_CONNECTIONS connections"
    echo
    printf '%-6s %-11s %8s %8s %10s %10s %9s %6s %7s %s\n' round config p50 p99 "added p50" "added p99" writes/s errors drain "closed-loop cores"
    jq -r '.runs[] as $r | (.added[] | select(.round == $r.round and .config == $r.config)) // {added_p50: "-", added_p99: "-"}
        | [$r.round, $r.config, $r.open_loop.p50, $r.open_loop.p99, .added_p50, .added_p99, $r.closed_loop_rps,
           ($r.open_loop.errors + $r.closed_loop_errors), $r.drain_s,
           ($r.closed_loop_cpu | to_entries | map(select(.value >= 0.05) | "\(.key) \(.value)") | join(", "))] | @tsv' \
        "$RESULTS/summary.json" | sort -k1,1n -k2,2 | while IFS=$'\t' read -r a b c d e f g h i j; do
        printf '%-6s %-11s %8s %8s %10s %10s %9s %6s %7s %s\n' "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$i" "$j"
    done
    echo
    echo "median over rounds (us; writes/s):"
    jq -r '.median[] | "  \(.config): p50 \(.p50) p99 \(.p99), added p50 \(.added_p50) p99 \(.added_p99), \(.rps) writes/s, errors \(.errors)"' \
        "$RESULTS/summary.json"
    echo
    echo "PostgreSQL sessions of handover during the closed loops (samples every 0.1 s: wait event or CPU | statement):"
    jq -r '.runs[] | select(.config | startswith("postgres-")) | "  round \(.round) \(.config):", (.store_sessions_closed_loop[:5][] | "    \(.n) \(.what)")' \
        "$RESULTS/summary.json"
    echo
    echo "verdicts:"
    jq -r '.verdicts.added_p99[] | "  \(.instances) instance(s): added p99 postgres \(.postgres_added_p99) us vs local \(.local_added_p99) us + 1 ms = \(.budget) us: \(.verdict)"' \
        "$RESULTS/summary.json"
    jq -r '.verdicts.scaling | select(. != null) | "  writes/s: postgres 3 instances \(.postgres_3) vs 1 instance \(.postgres_1): \(.ratio)x (goal 2x): \(.verdict); local journals: \(.local_ratio)x"' \
        "$RESULTS/summary.json"
    echo
    echo "raw results: $RESULTS"
} | tee "$RESULTS/summary.txt"
