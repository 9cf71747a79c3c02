#!/usr/bin/env bash
# Trigger-write benchmark (DESIGN.md section 8: a trigger write through
# handover, durable journal append included, may add at most the disk's own
# fdatasync p99 + 0.5 ms). What and why: benches/README.md, section 2.
#
# One run compares, against the same source emulator:
#   direct    the generator talks to the source emulator;
#   always    handover with [journal] sync = "always" (fdatasync before the
#             response is released, group commit);
#   interval  handover with sync = "interval" (written before the response,
#             fdatasync every 5 ms by the maintenance thread);
# and measures the disk's own append + fdatasync latency in the journals'
# directory right before each rate (`loadgen fdatasync`). The trigger is a
# client registration, `POST /c2id/clients` with the master token (201 with
# a new client_id, which handover journals and the sync copies to a target
# emulator). Open loop at fixed rates, then closed loop (sustained writes/s).
#
#   bash benches/trigger_write.sh                  # ~10 minutes
#   ROUNDS=1 DURATION=10 bash benches/trigger_write.sh
#
# Knobs (environment):
#   ROUNDS=3             every configuration is measured this many times,
#                        in a rotated order
#   RATES="200 500"      open-loop rates, writes/s
#   DURATION=20 WARMUP=3 open-loop measured / warm-up seconds
#   CL_DURATION=10 CL_WARMUP=2   closed-loop measured / warm-up seconds
#   OL_CONNECTIONS=32 CL_CONNECTIONS=32
#   TARGETS="direct always interval"
#   FSYNC_COUNT=2000     appends + fdatasync per disk probe
#   DRAIN_TIMEOUT_S=300  after each closed loop, wait this long at most for
#                        the proxy's journal to drain (the sync catching up)
#                        before the next measurement
#   PROXY_CPU=0,1 LOAD_CPU=0,1   taskset core lists for the servers
#                        (emulators and handover) / the generator; default
#                        unpinned (the fdatasync dominates, not cross-core
#                        wake-ups)
#   JOURNAL_PARENT=${TMPDIR:-/tmp}  where the journals and the probe file go
#                        (the disk measured)
#   SKIP_BUILD=0 KEEP_TMP=0
#   RESULTS=benches/results/trigger-<timestamp>
#
# Everything started here is stopped on exit (trap), by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
RATES=${RATES:-"200 500"}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
CL_DURATION=${CL_DURATION:-10}
CL_WARMUP=${CL_WARMUP:-2}
OL_CONNECTIONS=${OL_CONNECTIONS:-32}
CL_CONNECTIONS=${CL_CONNECTIONS:-32}
TARGETS=${TARGETS:-"direct always interval"}
FSYNC_COUNT=${FSYNC_COUNT:-2000}
DRAIN_TIMEOUT_S=${DRAIN_TIMEOUT_S:-300}
PROXY_CPU=${PROXY_CPU:-0,1}
LOAD_CPU=${LOAD_CPU:-0,1}
JOURNAL_PARENT=${JOURNAL_PARENT:-${TMPDIR:-/tmp}}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=${RESULTS:-benches/results/trigger-$STAMP}
BENCH_NAME=trigger_write
WORK=$(mktemp -d "$JOURNAL_PARENT/handover-trigger.XXXXXX")
# shellcheck source=benches/lib.sh
source benches/lib.sh

bench_begin

# ---------------------------------------------------------------- stack

start_emulators

declare -A URL=() ADMIN=() CPU_PIDS=()
URL[direct]=http://$SOURCE_ADDR$TRIGGER_PATH
CPU_PIDS[direct]=$SOURCE_PID
for sync in always interval; do
    proxy_port=$(free_port)
    admin_port=$(free_port)
    write_config "$WORK/$sync.toml" "$proxy_port" "$admin_port" "$SOURCE_ADDR" "$TARGET_ADDR" \
        "$WORK/journal-$sync" "$sync"
    cp "$WORK/$sync.toml" "$RESULTS/handover-$sync.toml"
    ADMIN[$sync]=http://127.0.0.1:$admin_port
    start_handover "handover-$sync" "$WORK/$sync.toml" "${ADMIN[$sync]}"
    URL[$sync]=http://127.0.0.1:$proxy_port$TRIGGER_PATH
    CPU_PIDS[$sync]=$HANDOVER_PID
done
taskset -a -p -c "$PROXY_CPU" "$SOURCE_PID" >/dev/null
taskset -a -p -c "$PROXY_CPU" "$TARGET_PID" >/dev/null
for sync in always interval; do
    taskset -a -p -c "$PROXY_CPU" "${CPU_PIDS[$sync]}" >/dev/null
done
ALL_PIDS=("$SOURCE_PID" "$TARGET_PID" "${CPU_PIDS[always]}" "${CPU_PIDS[interval]}")
for t in $TARGETS; do
    "$LOADGEN" wait-ready --url "${URL[$t]%$TRIGGER_PATH}/c2id/jwks.json" >/dev/null
done
mkdir -p "$WORK/probe"
bench_log "source $SOURCE_ADDR (pid $SOURCE_PID), target $TARGET_ADDR (pid $TARGET_PID), handover always pid ${CPU_PIDS[always]}, interval pid ${CPU_PIDS[interval]}"

# loadgen MODE TARGET OUT [ARGS...]: one measured run; CPU of the target's
# server process (the emulator for direct, handover otherwise) is reported,
# everything else of the benchmark counts as "own".
run_load() {
    local mode=$1 target=$2 out=$3
    shift 3
    local own=() pid
    for pid in "${ALL_PIDS[@]}"; do
        [[ $pid == "${CPU_PIDS[$target]}" ]] || own+=(--own-pid "$pid")
    done
    taskset -c "$LOAD_CPU" "$LOADGEN" "$mode" --url "${URL[$target]}" "${TRIGGER_ARGS[@]}" \
        --cpu-pid "${CPU_PIDS[$target]}" "${own[@]}" --json --label "target=$target" "$@" \
        >"$out"
}

# Waits until the journal of handover $1 is empty; prints the seconds it took.
drain() {
    local t0 depth
    t0=$(date +%s.%N)
    while :; do
        depth=$("$HANDOVER" status --json --admin "${ADMIN[$1]}" | jq -r '.journal.depth')
        [[ $depth != 0 ]] || break
        if (($(date +%s) - ${t0%.*} > DRAIN_TIMEOUT_S)); then
            bench_log "$1: journal still at depth $depth after ${DRAIN_TIMEOUT_S}s"
            break
        fi
        sleep 0.2
    done
    awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'
}

# ---------------------------------------------------------------- rounds

: >"$RESULTS/drains.jsonl"
read -ra TARGET_LIST <<<"$TARGETS"
read -ra RATE_LIST <<<"$RATES"
for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order so that a drift in machine load does not always hit
    # the same configuration.
    order=()
    n=${#TARGET_LIST[@]}
    for i in $(seq 0 $((n - 1))); do
        order+=("${TARGET_LIST[$(((i + round - 1) % n))]}")
    done
    for rate in "${RATE_LIST[@]}"; do
        "$LOADGEN" fdatasync --dir "$WORK/probe" --count "$FSYNC_COUNT" --json \
            --label "round=$round" --label "rate=$rate" >"$RESULTS/r$round-fsync-$rate.fsync"
        for t in "${order[@]}"; do
            bench_log "round $round: open loop $rate/s -> $t"
            [[ -z ${ADMIN[$t]:-} ]] || curl -fs "${ADMIN[$t]}/metrics" >"$RESULTS/r$round-ol$rate-$t.metrics-before"
            run_load open-loop "$t" "$RESULTS/r$round-ol$rate-$t.json" \
                --rate "$rate" --duration "$DURATION" --warmup "$WARMUP" \
                --connections "$OL_CONNECTIONS" --label "round=$round"
            [[ -z ${ADMIN[$t]:-} ]] || curl -fs "${ADMIN[$t]}/metrics" >"$RESULTS/r$round-ol$rate-$t.metrics-after"
        done
    done
    for t in "${order[@]}"; do
        bench_log "round $round: closed loop -> $t"
        metrics0=$(curl -fs "${ADMIN[$t]:-http://127.0.0.1:1}/metrics" 2>/dev/null || true)
        run_load closed-loop "$t" "$RESULTS/r$round-cl-$t.json" \
            --duration "$CL_DURATION" --warmup "$CL_WARMUP" \
            --connections "$CL_CONNECTIONS" --label "round=$round"
        if [[ -n $metrics0 ]]; then
            # fdatasyncs and records during the closed loop: group commit.
            metrics1=$(curl -fs "${ADMIN[$t]}/metrics")
            printf '%s\n' "$metrics0" >"$RESULTS/r$round-cl-$t.metrics-before"
            printf '%s\n' "$metrics1" >"$RESULTS/r$round-cl-$t.metrics-after"
            # The sync is slower than the journal: let it catch up, so the
            # next measurement starts from an empty journal (and say how
            # long that took).
            depth=$("$HANDOVER" status --json --admin "${ADMIN[$t]}" | jq -r '.journal.depth')
            secs=$(drain "$t")
            bench_log "round $round: $t: journal depth $depth after the closed loop, drained in ${secs}s"
            jq -nc --arg run "r$round-cl-$t" --arg d "$depth" --arg s "$secs" \
                '{run: $run, depth_after: ($d|tonumber), drain_s: ($s|tonumber)}' >>"$RESULTS/drains.jsonl"
        fi
    done
done
"$LOADGEN" fdatasync --dir "$WORK/probe" --count "$FSYNC_COUNT" --json \
    --label "round=end" >"$RESULTS/end-fsync.fsync"

# Everything the proxies journaled reached the target (a sanity check: the
# sync kept up, nothing is stuck).
for sync in always interval; do
    "$HANDOVER" status --json --admin "${ADMIN[$sync]}" >"$RESULTS/status-$sync.json" || true
done

# ---------------------------------------------------------------- summary

counter() { awk -v m="$1" '$1 == m { print $2 }' "$2" | head -n 1; }
{
    for f in "$RESULTS"/r*-cl-*.metrics-before; do
        [[ -e $f ]] || continue
        after=${f%-before}-after
        base=$(basename "${f%.metrics-before}")
        fs0=$(counter handover_journal_fsync_seconds_count "$f")
        fs1=$(counter handover_journal_fsync_seconds_count "$after")
        ap0=$(counter handover_journal_append_seconds_count "$f")
        ap1=$(counter handover_journal_append_seconds_count "$after")
        jq -n --arg run "$base" --arg fs0 "${fs0:-0}" --arg fs1 "${fs1:-0}" --arg ap0 "${ap0:-0}" --arg ap1 "${ap1:-0}" \
            '{run: $run, fsyncs: (($fs1|tonumber) - ($fs0|tonumber)), appends: (($ap1|tonumber) - ($ap0|tonumber))}'
    done
} | jq -s . >"$RESULTS/group-commit.json"

# Inside handover, during each open-loop run (warm-up included): its own
# fdatasync and append-wait histograms (handover_journal_fsync_seconds,
# handover_journal_append_seconds), as deltas between the two snapshots;
# percentiles are bucket upper bounds.
hist_delta() {
    awk -v m="$1" '
        FNR == 1 { file++ }
        index($1, m "_bucket{le=\"") == 1 {
            le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
            if (file == 1) before[le] = $2; else { after[le] = $2; order[++n] = le }
        }
        END {
            total = after["+Inf"] - before["+Inf"]
            printf "{\"count\":%d", total
            split("0.5 0.99", qs, " ")
            for (k = 1; k <= 2; k++) {
                q = qs[k]; ans = "null"
                for (i = 1; i <= n; i++) {
                    c = after[order[i]] - before[order[i]]
                    if (total > 0 && c >= q * total) { ans = order[i]; break }
                }
                if (ans == "+Inf") ans = "null"
                printf ",\"p%s_le_ms\":%s", (q == 0.5 ? "50" : "99"), (ans == "null" ? ans : ans * 1000)
            }
            printf "}"
        }' "$2" "$3"
}
{
    for f in "$RESULTS"/r*-ol*.metrics-before; do
        [[ -e $f ]] || continue
        after=${f%-before}-after
        [[ -e $after ]] || continue
        base=$(basename "${f%.metrics-before}")
        jq -n --arg run "$base" \
            --argjson fsync "$(hist_delta handover_journal_fsync_seconds "$f" "$after")" \
            --argjson append "$(hist_delta handover_journal_append_seconds "$f" "$after")" \
            '{run: $run, fsync: $fsync, append_wait: $append}'
    done
} | jq -s . >"$RESULTS/in-process.json"

jq -n \
    --slurpfile machine "$RESULTS/machine.json" \
    --slurpfile runs <(cat "$RESULTS"/r*.json) \
    --slurpfile fsync <(cat "$RESULTS"/*.fsync) \
    --slurpfile groups "$RESULTS/group-commit.json" \
    --slurpfile drains "$RESULTS/drains.jsonl" \
    --slurpfile inproc "$RESULTS/in-process.json" \
    -f <(
        cat <<'JQ'
def r1: . * 10 | round / 10;
def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
            else (.[length / 2 - 1] + .[length / 2]) / 2 end;
($runs | map(select(.mode == "open-loop"))) as $ol
| ($runs | map(select(.mode == "closed-loop"))) as $cl
| [$ol[] | {round: .labels.round, rate: .rate, target: .labels.target,
            p50: .latency_us.p50, p99: .latency_us.p99, p999: .latency_us.p999, max: .latency_us.max,
            lag_p99: .send_lag_us.p99, errors: (.errors + .timeouts), other: .other_load,
            cpu_us: .cpu_us_per_request}] as $rows
| [$rows[] | select(.target != "direct") as $p
   | ($rows[] | select(.target == "direct" and .round == $p.round and .rate == $p.rate)) as $d
   | ($fsync[] | select(.labels.round == $p.round and (.labels.rate | tonumber) == $p.rate)) as $f
   | {round: $p.round, rate: $p.rate, target: $p.target,
      added_p50: ($p.p50 - $d.p50 | r1), added_p99: ($p.p99 - $d.p99 | r1),
      fsync_p50: $f.latency_us.p50, fsync_p99: $f.latency_us.p99,
      budget_p99: ($f.latency_us.p99 + 500 | r1),
      lag_p99: ([$p.lag_p99, $d.lag_p99] | max), other: ([$p.other, $d.other] | max),
      errors: ($p.errors + $d.errors)}
   | .verdict = (if .lag_p99 > .budget_p99 / 2 then "NOISY"
                 elif .added_p99 <= .budget_p99 then "MET" else "MISSED" end)] as $added
| {
  machine: $machine[0],
  open_loop: $rows,
  fdatasync: [$fsync[] | {round: .labels.round, rate: .labels.rate, p50: .latency_us.p50, p99: .latency_us.p99,
                          p999: .latency_us.p999, max: .latency_us.max, per_s: .achieved_per_s}],
  added: $added,
  added_median: ([$added[] | {rate, target}] | unique | map(. as $k
      | [$added[] | select(.rate == $k.rate and .target == $k.target)] as $g
      | $k + {rounds: ($g | length),
              added_p50: ([$g[].added_p50] | median | r1), added_p99: ([$g[].added_p99] | median | r1),
              fsync_p99: ([$g[].fsync_p99] | median | r1), budget_p99: ([$g[].budget_p99] | median | r1),
              met_rounds: ([$g[] | select(.verdict == "MET")] | length),
              missed_rounds: ([$g[] | select(.verdict == "MISSED")] | length),
              noisy_rounds: ([$g[] | select(.verdict == "NOISY")] | length)})),
  closed_loop: [$cl[] | {round: .labels.round, target: .labels.target, rps: .achieved_rps,
                         p50: .latency_us.p50, p99: .latency_us.p99, errors: (.errors + .timeouts),
                         cpu_us: .cpu_us_per_request, util: .cpu_utilization, other: .other_load}],
  closed_loop_median: ([$cl[] | .labels.target] | unique | map(. as $t
      | [$cl[] | select(.labels.target == $t)] as $g
      | {target: $t, rps: ([$g[].achieved_rps] | median), cpu_us: ([$g[].cpu_us_per_request] | median)})),
  group_commit: $groups[0],
  drains_after_closed_loop: $drains,
  in_process: $inproc[0]
}
JQ
    ) >"$RESULTS/summary.json"

{
    echo
    echo "== trigger write (POST /c2id/clients), $(jq -r '.machine | "\(.nproc) x \(.cpu), kernel \(.kernel), journal on \(.journal_disk), commit \(.commit)"' "$RESULTS/summary.json")"
    echo
    echo "open loop, latency from the intended send time (us):"
    printf '%-6s %6s %-9s %9s %9s %9s %9s %9s %7s %6s\n' round rate target p50 p99 p99.9 max lag_p99 errors other
    jq -r '.open_loop | sort_by(.round, .rate, .target)[] | [.round, .rate, .target, .p50, .p99, .p999, .max, .lag_p99, .errors, .other] | @tsv' \
        "$RESULTS/summary.json" | while IFS=$'\t' read -r a b c d e f g h i j; do
        printf '%-6s %6s %-9s %9s %9s %9s %9s %9s %7s %6s\n' "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$i" "$j"
    done
    echo
    echo "disk: write + fdatasync of 128 B in the journals' directory (us):"
    jq -r '.fdatasync[] | "  round \(.round) rate \(.rate // "-"): p50 \(.p50) p99 \(.p99) p99.9 \(.p999) max \(.max) (\(.per_s)/s)"' "$RESULTS/summary.json"
    echo
    echo "added latency (handover minus direct, same round) vs budget = fdatasync p99 + 500 us:"
    printf '%-6s %6s %-9s %10s %10s %10s %10s %8s\n' round rate target "added p50" "added p99" "fsync p99" budget verdict
    jq -r '.added | sort_by(.round, .rate, .target)[] | [.round, .rate, .target, .added_p50, .added_p99, .fsync_p99, .budget_p99, .verdict] | @tsv' \
        "$RESULTS/summary.json" | while IFS=$'\t' read -r a b c d e f g h; do
        printf '%-6s %6s %-9s %10s %10s %10s %10s %8s\n' "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h"
    done
    echo "median over rounds:"
    jq -r '.added_median[] | "  \(.rate)/s \(.target): added p50 \(.added_p50) us, p99 \(.added_p99) us; budget \(.budget_p99) us; rounds met \(.met_rounds) missed \(.missed_rounds) noisy \(.noisy_rounds)"' \
        "$RESULTS/summary.json"
    echo "inside handover during each open-loop run (bucket upper bounds, ms):"
    jq -r '.in_process[] | "  \(.run): \(.fsync.count) fdatasyncs p50 <= \(.fsync.p50_le_ms) p99 <= \(.fsync.p99_le_ms); append wait p50 <= \(.append_wait.p50_le_ms) p99 <= \(.append_wait.p99_le_ms)"' "$RESULTS/summary.json"
    echo
    echo "closed loop, $CL_CONNECTIONS connections (sustained writes/s):"
    jq -r '.closed_loop | sort_by(.round, .target)[] | "  round \(.round) \(.target): \(.rps)/s p50 \(.p50) us p99 \(.p99) us errors \(.errors) cpu/req \(.cpu_us) us other \(.other)"' \
        "$RESULTS/summary.json"
    jq -r '.closed_loop_median[] | "  median \(.target): \(.rps)/s, cpu/req \(.cpu_us) us"' "$RESULTS/summary.json"
    jq -r '.group_commit[] | "  \(.run): \(.appends) appends in \(.fsyncs) fdatasyncs"' "$RESULTS/summary.json"
    jq -r '.drains_after_closed_loop[] | "  \(.run): journal depth \(.depth_after) at the end, drained in \(.drain_s) s"' "$RESULTS/summary.json"
    echo
    echo "raw results: $RESULTS"
} | tee "$RESULTS/summary.txt"
