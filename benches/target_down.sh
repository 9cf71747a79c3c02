#!/usr/bin/env bash
# Target-down benchmark (DESIGN.md section 8: with the target down or slow,
# the primary-path p99 stays within 5 % of its value with the target up).
# What and why: benches/README.md, section 3.
#
# A source emulator, a target emulator and `handover serve` in front, as in
# production. Open-loop trigger writes (`POST /c2id/clients`, journaled, then
# synced to the target) at RATE/s through handover, with the target in one of
# these states, each measured once per round in a rotated order:
#   up       answering normally;
#   slow     every answer delayed by SLOW_MS (the emulator's latency knob);
#   down     every connection dropped without an answer (the emulator's
#            `down` knob: what a crashed backend behind a balancer looks like);
#   stopped  the target process SIGSTOPped: connections are accepted by the
#            kernel and never answered (a hung server; the sync's request
#            timeout is what ends each attempt).
# After each state the target is restored and the journal drained before
# the next measurement (time to drain reported). Direct to the source is
# measured too, as the floor.
#
#   bash benches/target_down.sh                   # ~6 minutes
#   ROUNDS=3 STATES="up stopped" bash benches/target_down.sh
#
# Knobs (environment):
#   ROUNDS=2             rounds; each measures every state once
#   STATES="up slow down stopped"
#   RATE=500             trigger writes/s
#   DURATION=20 WARMUP=3 measured / warm-up seconds (the target changes state
#                        before the warm-up)
#   CONNECTIONS=32
#   SLOW_MS=1000         the slow target's added latency
#   SYNC=always          [journal] sync
#   DRAIN_TIMEOUT_S=90   how long to wait for the journal to drain after a state
#   SKIP_BUILD=0 KEEP_TMP=0
#   RESULTS=benches/results/target-down-<timestamp>
#
# Everything started here is stopped on exit (trap), by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
STATES=${STATES:-"up slow down stopped"}
RATE=${RATE:-500}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
CONNECTIONS=${CONNECTIONS:-32}
SLOW_MS=${SLOW_MS:-1000}
SYNC=${SYNC:-always}
DRAIN_TIMEOUT_S=${DRAIN_TIMEOUT_S:-90}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=${RESULTS:-benches/results/target-down-$STAMP}
BENCH_NAME=target_down
WORK=$(mktemp -d "${TMPDIR:-/tmp}/handover-target-down.XXXXXX")
# shellcheck source=benches/lib.sh
source benches/lib.sh

bench_begin

# ---------------------------------------------------------------- stack

start_emulators
PROXY_PORT=$(free_port)
ADMIN_PORT=$(free_port)
ADMIN=http://127.0.0.1:$ADMIN_PORT
write_config "$WORK/handover.toml" "$PROXY_PORT" "$ADMIN_PORT" "$SOURCE_ADDR" "$TARGET_ADDR" \
    "$WORK/journal" "$SYNC"
cp "$WORK/handover.toml" "$RESULTS/handover.toml"
start_handover handover "$WORK/handover.toml" "$ADMIN"
H_PID=$HANDOVER_PID
"$LOADGEN" wait-ready --url "http://127.0.0.1:$PROXY_PORT/c2id/jwks.json" >/dev/null
bench_log "source $SOURCE_ADDR (pid $SOURCE_PID), target $TARGET_ADDR (pid $TARGET_PID), handover pid $H_PID"

knobs() {
    curl -fsS -X PUT -H "Authorization: Bearer $HANDOVER_TARGET_TOKEN" -H 'Content-Type: application/json' \
        --data "$1" "http://$TARGET_ADDR/c2id/_emulator/knobs" >/dev/null
}

set_state() {
    case $1 in
        up) ;;
        slow) knobs "{\"latency_ms\": $SLOW_MS}" ;;
        down) knobs '{"down": true}' ;;
        stopped) kill -STOP "$TARGET_PID" ;;
        *) bench_die "unknown state $1" ;;
    esac
}

restore() {
    case $1 in
        stopped) kill -CONT "$TARGET_PID" ;;
        slow | down) knobs '{"latency_ms": 0, "down": false}' ;;
    esac
}

# Waits until the journal is empty; prints the seconds it took.
drain() {
    local t0 depth
    t0=$(date +%s.%N)
    while :; do
        depth=$("$HANDOVER" status --json --admin "$ADMIN" | jq -r '.journal.depth')
        [[ $depth != 0 ]] || break
        if (($(date +%s) - ${t0%.*} > DRAIN_TIMEOUT_S)); then
            bench_log "journal still at depth $depth after ${DRAIN_TIMEOUT_S}s"
            break
        fi
        sleep 0.2
    done
    awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'
}

# Sum of a counter over its labels, from handover's /metrics.
metric_sum() {
    curl -fs "$ADMIN/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%d", s }'
}

# CPU ticks (user + system) of one process.
proc_ticks() {
    local f
    read -ra f <"/proc/$1/stat"
    echo $((f[13] + f[14]))
}

run_load() {
    local label=$1 url=$2 out=$3
    shift 3
    "$LOADGEN" open-loop --url "$url" "${TRIGGER_ARGS[@]}" --rate "$RATE" \
        --duration "$DURATION" --warmup "$WARMUP" --connections "$CONNECTIONS" \
        --json --label "target=$label" "$@" >"$out"
}

# ---------------------------------------------------------------- rounds

read -ra STATE_LIST <<<"$STATES"
: >"$RESULTS/drains.jsonl"
for round in $(seq 1 "$ROUNDS"); do
    n=${#STATE_LIST[@]}
    order=()
    for i in $(seq 0 $((n - 1))); do
        order+=("${STATE_LIST[$(((i + round - 1) % n))]}")
    done
    bench_log "round $round: direct"
    run_load direct "http://$SOURCE_ADDR$TRIGGER_PATH" "$RESULTS/r$round-direct.json" \
        --cpu-pid "$SOURCE_PID" --own-pid "$TARGET_PID" --own-pid "$H_PID" --label "round=$round"
    for state in "${order[@]}"; do
        bench_log "round $round: target $state"
        set_state "$state"
        f0=$(metric_sum handover_sync_failures_total)
        s0=$(proc_ticks "$SOURCE_PID")
        t0=$(date +%s.%N)
        run_load "$state" "http://127.0.0.1:$PROXY_PORT$TRIGGER_PATH" "$RESULTS/r$round-$state.json" \
            --cpu-pid "$H_PID" --own-pid "$SOURCE_PID" --own-pid "$TARGET_PID" --label "round=$round"
        t1=$(date +%s.%N)
        s1=$(proc_ticks "$SOURCE_PID")
        f1=$(metric_sum handover_sync_failures_total)
        depth=$("$HANDOVER" status --json --admin "$ADMIN" | jq -r '.journal.depth')
        restore "$state"
        secs=$(drain)
        bench_log "round $round: target $state: journal depth $depth at the end, drained in ${secs}s"
        # Failed sync attempts per second while the target was in this
        # state, and the cores the source (the primary) used meanwhile.
        jq -nc --arg r "$round" --arg s "$state" --arg d "$depth" --arg t "$secs" \
            --arg f "$((f1 - f0))" --arg st "$((s1 - s0))" --arg w "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
            --arg tck "$(getconf CLK_TCK)" \
            '{round: $r, state: $s, depth_at_end: ($d|tonumber), drain_s: ($t|tonumber),
              sync_failures_per_s: (($f|tonumber) / ($w|tonumber) | round),
              source_cores: (($st|tonumber) / ($tck|tonumber) / ($w|tonumber) * 100 | round / 100)}' >>"$RESULTS/drains.jsonl"
    done
done
# No `verify` here: the direct runs create clients past handover, which are
# drift by construction. The journal drained (above) with no dead letters
# is the check that nothing written through handover was left behind.
"$HANDOVER" status --json --admin "$ADMIN" >"$RESULTS/status-after.json"

# ---------------------------------------------------------------- summary

jq -n \
    --slurpfile machine "$RESULTS/machine.json" \
    --slurpfile runs <(cat "$RESULTS"/r*.json) \
    --slurpfile drains "$RESULTS/drains.jsonl" \
    --slurpfile status "$RESULTS/status-after.json" \
    -f <(
        cat <<'JQ'
def r1: . * 10 | round / 10;
def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
            else (.[length / 2 - 1] + .[length / 2]) / 2 end;
[$runs[] | {round: .labels.round, state: .labels.target, p50: .latency_us.p50, p99: .latency_us.p99,
            p999: .latency_us.p999, max: .latency_us.max, lag_p99: .send_lag_us.p99,
            errors: (.errors + .timeouts), other: .other_load, cpu_us: .cpu_us_per_request}] as $rows
| [$rows[] | select(.state != "up" and .state != "direct") as $s
   | ($rows[] | select(.state == "up" and .round == $s.round)) as $u
   | {round: $s.round, state: $s.state, up_p99: $u.p99, p99: $s.p99,
      p99_ratio: (if $u.p99 > 0 then ($s.p99 / $u.p99 * 1000 | round / 1000) else null end),
      p50_ratio: (if $u.p50 > 0 then ($s.p50 / $u.p50 * 1000 | round / 1000) else null end),
      cpu_ratio: (if ($u.cpu_us // 0) > 0 then (($s.cpu_us // 0) / $u.cpu_us * 1000 | round / 1000) else null end),
      other: ([$s.other, $u.other] | max), errors: $s.errors}] as $cmp
| {machine: $machine[0], runs: $rows, vs_up: $cmp,
   median: ([$cmp[].state] | unique | map(. as $st | [$cmp[] | select(.state == $st)] as $g
            | {state: $st, rounds: ($g | length), p99_ratio: ([$g[].p99_ratio] | median),
               p50_ratio: ([$g[].p50_ratio] | median), cpu_ratio: ([$g[].cpu_ratio] | median),
               within_5pct_rounds: ([$g[] | select(.p99_ratio <= 1.05)] | length)})),
   drains: $drains,
   journal_after: $status[0].journal}
JQ
    ) >"$RESULTS/summary.json"

{
    echo
    echo "== target down or slow: $RATE trigger writes/s through handover (sync = $SYNC)"
    jq -r '.machine | "   \(.nproc) x \(.cpu), kernel \(.kernel), commit \(.commit)"' "$RESULTS/summary.json"
    echo
    printf '%-6s %-8s %9s %9s %9s %9s %9s %7s %8s %6s\n' round state p50 p99 p99.9 max lag_p99 errors cpu/req other
    jq -r '.runs | sort_by(.round)[] | [.round, .state, .p50, .p99, .p999, .max, .lag_p99, .errors, .cpu_us, .other] | @tsv' \
        "$RESULTS/summary.json" | while IFS=$'\t' read -r a b c d e f g h i j; do
        printf '%-6s %-8s %9s %9s %9s %9s %9s %7s %8s %6s\n' "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$i" "$j"
    done
    echo
    echo "vs target up in the same round (ratio of handover's latency; budget p99 ratio <= 1.05):"
    jq -r '.vs_up[] | "  round \(.round) \(.state): p99 \(.p99) vs \(.up_p99) us = x\(.p99_ratio), p50 x\(.p50_ratio), cpu/req x\(.cpu_ratio), other load \(.other)"' "$RESULTS/summary.json"
    jq -r '.median[] | "  median \(.state): p99 x\(.p99_ratio), p50 x\(.p50_ratio), cpu/req x\(.cpu_ratio); rounds within 5 %: \(.within_5pct_rounds)/\(.rounds)"' "$RESULTS/summary.json"
    jq -r '.drains[] | "  round \(.round) \(.state): \(.sync_failures_per_s) failed sync attempts/s, source used \(.source_cores) cores; journal depth \(.depth_at_end) at the end, drained \(.drain_s) s after the target came back"' "$RESULTS/summary.json"
    jq -r '"journal after: depth \(.journal_after.depth), dead letters \(.journal_after.dead_letters), last seq \(.journal_after.last_seq)"' "$RESULTS/summary.json"
    echo "raw results: $RESULTS"
} | tee "$RESULTS/summary.txt"
