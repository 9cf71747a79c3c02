#!/usr/bin/env bash
# Cutover-pause benchmark (DESIGN.md section 8: write pause p99 <= 1 s at 500
# writes/s, zero client errors, zero drift after). What and why:
# benches/README.md, section 5.
#
# A source emulator (seeded with SEED records per dataset), an empty target
# emulator with the same JWK set, `handover serve` in front; the backfill is
# run to completion (a cutover refuses without it). Then open-loop trigger
# writes (`POST /c2id/clients`) at RATE/s for the whole run, with the
# generator's per-request timeline, while the script flips the primary
# FLIPS times (cutover, rollback, cutover, ...) every GAP_S seconds. Per
# flip: the pause handover reports (how long trigger requests were held),
# the longest latency of any request scheduled during the flip (what a
# client saw), and the failed requests. After the load: the journal drains,
# then `handover verify` must report drift 0.
#
#   bash benches/cutover.sh                        # ~1.5 minutes
#   FLIPS=20 RATE=500 bash benches/cutover.sh
#
# Knobs (environment):
#   RATE=500             trigger writes/s, open loop, for the whole run
#   FLIPS=10             cutovers and rollbacks, alternating (even: the run
#                        ends with source as the primary)
#   GAP_S=4              seconds between flips (and before the first one)
#   WARMUP=3             seconds of load before the first flip's gap
#   TAIL_S=3             seconds of load after the last flip
#   FLIP_ALLOW_S=0       seconds the load is lengthened by per flip, for
#                        flip commands that take long (a distant target's
#                        pre-flight); a flip whose window saw no request is
#                        reported
#   CONNECTIONS=64       the generator's keep-alive connections
#   SEED=1000            records per dataset on the source (the backfill
#                        must finish before a cutover)
#   SYNC=always          [journal] sync
#   MAX_PAUSE=           `--max-pause` for every flip (default: handover's 2s)
#   FLIP_ARGS=           more flags for every flip command (`--dry-run`:
#                        the pre-flight alone, to see what it costs the sync)
#   WINDOW_MARGIN_S=0.1  a request counts for a flip when it was scheduled
#                        from this long before the flip command started to
#                        this long after it returned
#   TARGET_LATENCY_MS=0  latency the target emulator adds to every answer
#                        (its knob, set after the backfill): a distant target
#   MIX=0                1: send the mix of trigger writes of benches/lib.sh
#                        (its clients and tokens created after the backfill)
#                        instead of client registrations only
#   BENCH_ISSUER=        one issuer URL for both emulators (needed with MIX=1:
#                        the mix's access tokens must be valid at the target)
#   SKIP_BUILD=0 KEEP_TMP=0
#   RESULTS=benches/results/cutover-<timestamp>
#
# Everything started here is stopped on exit (trap), by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-500}
FLIPS=${FLIPS:-10}
GAP_S=${GAP_S:-4}
WARMUP=${WARMUP:-3}
TAIL_S=${TAIL_S:-3}
CONNECTIONS=${CONNECTIONS:-64}
SEED=${SEED:-1000}
SYNC=${SYNC:-always}
MAX_PAUSE=${MAX_PAUSE:-}
FLIP_ARGS=${FLIP_ARGS:-}
WINDOW_MARGIN_S=${WINDOW_MARGIN_S:-0.1}
TARGET_LATENCY_MS=${TARGET_LATENCY_MS:-0}
FLIP_ALLOW_S=${FLIP_ALLOW_S:-0}
MIX=${MIX:-0}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=${RESULTS:-benches/results/cutover-$STAMP}
BENCH_NAME=cutover
WORK=$(mktemp -d "${TMPDIR:-/tmp}/handover-cutover.XXXXXX")
# shellcheck source=benches/lib.sh
source benches/lib.sh

bench_begin

# ---------------------------------------------------------------- stack

start_emulators --seed "$SEED"
PROXY_PORT=$(free_port)
ADMIN_PORT=$(free_port)
ADMIN=http://127.0.0.1:$ADMIN_PORT
write_config "$WORK/handover.toml" "$PROXY_PORT" "$ADMIN_PORT" "$SOURCE_ADDR" "$TARGET_ADDR" \
    "$WORK/journal" "$SYNC"
cp "$WORK/handover.toml" "$RESULTS/handover.toml"
start_handover handover "$WORK/handover.toml" "$ADMIN"
H_PID=$HANDOVER_PID
URL=http://127.0.0.1:$PROXY_PORT$TRIGGER_PATH
"$LOADGEN" wait-ready --url "http://127.0.0.1:$PROXY_PORT/c2id/jwks.json" >/dev/null
bench_log "source $SOURCE_ADDR (pid $SOURCE_PID), target $TARGET_ADDR (pid $TARGET_PID), handover pid $H_PID"

# ---------------------------------------------------------------- backfill

"$HANDOVER" backfill start --json --admin "$ADMIN" >"$RESULTS/backfill-start.json"
for i in $(seq 1 600); do
    state=$("$HANDOVER" status --json --admin "$ADMIN" | jq -r '.backfill.state')
    [[ $state == running ]] || break
    sleep 0.5
done
[[ $state == done ]] || bench_die "backfill ended $state"
bench_log "backfill done ($((3 * SEED)) records)"

if ((TARGET_LATENCY_MS > 0)); then
    curl -fsS -o /dev/null -X PUT -H "Authorization: Bearer $HANDOVER_TARGET_TOKEN" \
        -H 'Content-Type: application/json' --data "{\"latency_ms\":$TARGET_LATENCY_MS}" \
        "http://$TARGET_ADDR/c2id/_emulator/knobs" || bench_die "cannot set the target's latency knob"
    bench_log "target latency $TARGET_LATENCY_MS ms"
fi
LOAD_ARGS=("${TRIGGER_ARGS[@]}")
if [[ $MIX == 1 ]]; then
    # In $WORK: the mix carries this run's throwaway tokens.
    mix_prepare "$WORK" "http://127.0.0.1:$PROXY_PORT"
    mix_write "$WORK/mix.json" cutover
    LOAD_ARGS=(--mix "$WORK/mix.json")
    for i in $(seq 1 600); do
        [[ $("$HANDOVER" status --json --admin "$ADMIN" | jq -r '.journal.depth') != 0 ]] || break
        sleep 0.2
    done
    bench_log "the mix's $MIX_CLIENTS clients and $MIX_TOKENS refresh tokens created"
fi

# ---------------------------------------------------------------- load + flips

duration=$(awk -v f="$FLIPS" -v g="$GAP_S" -v t="$TAIL_S" -v a="$FLIP_ALLOW_S" 'BEGIN { print (f + 1) * g + f * a + t }')
"$LOADGEN" open-loop --url "$URL" "${LOAD_ARGS[@]}" --rate "$RATE" \
    --duration "$duration" --warmup "$WARMUP" --connections "$CONNECTIONS" \
    --cpu-pid "$H_PID" --own-pid "$SOURCE_PID" --own-pid "$TARGET_PID" \
    --timeline "$RESULTS/timeline.csv" --json --label "target=handover" \
    >"$RESULTS/load.json" 2>"$RESULTS/load.log" &
LOAD_PID=$!
PIDS+=("$LOAD_PID")
uptime >"$RESULTS/uptime-before.txt"

flip_args=(--json --admin "$ADMIN")
[[ -z $MAX_PAUSE ]] || flip_args+=(--max-pause "$MAX_PAUSE")
# shellcheck disable=SC2206 # words on purpose: FLIP_ARGS="--dry-run"
[[ -z $FLIP_ARGS ]] || flip_args+=($FLIP_ARGS)
# The journal's depth and lag every 50 ms: when, around a flip, the sync
# fell behind (before the hold, in it, after the release).
(
    while :; do
        printf '%s,%s\n' "$(date +%s.%N)" \
            "$(curl -fsS -H "Authorization: Bearer $HANDOVER_ADMIN_TOKEN" "$ADMIN/status" |
                jq -r '[.journal.depth, .journal.lag_ms, .sync.in_flight, .sync.waiting, .phase, .sync.concurrency_limit, .sync.latency_ms.p50, .sync.min_latency_ms, .sync.throttled_ms] | @csv')"
        sleep 0.05
    done
) >"$RESULTS/lag.csv" 2>/dev/null &
PIDS+=("$!")
: >"$RESULTS/flips.jsonl"
sleep "$(awk -v w="$WARMUP" -v g="$GAP_S" 'BEGIN { print w + g }')"
for i in $(seq 1 "$FLIPS"); do
    if ((i % 2 == 1)); then verb=cutover; else verb=rollback; fi
    t0=$(date +%s.%N)
    rc=0
    report=$("$HANDOVER" "$verb" "${flip_args[@]}") || rc=$?
    t1=$(date +%s.%N)
    [[ -n $report ]] || report='[{}]'
    printf '%s\n' "$report" >"$RESULTS/flip-$i.json"
    jq -c --arg i "$i" --arg verb "$verb" --arg t0 "$t0" --arg t1 "$t1" --arg rc "$rc" \
        '{flip: ($i|tonumber), verb: $verb, t0: ($t0|tonumber), t1: ($t1|tonumber), rc: ($rc|tonumber),
          outcome: .[0].outcome, pause_ms: .[0].pause_ms, held: .[0].held, released: .[0].released,
          rejected: .[0].rejected, epoch: .[0].epoch, primary: .[0].primary, reason: .[0].reason,
          steps: .[0].steps}' <<<"$report" >>"$RESULTS/flips.jsonl"
    bench_log "flip $i $verb: $(jq -r '"\(.outcome) pause \(.pause_ms) ms held \(.held) rejected \(.rejected) \(.reason // "")"' <<<"$(tail -n 1 "$RESULTS/flips.jsonl")")"
    sleep "$GAP_S"
done
if ! kill -0 "$LOAD_PID" 2>/dev/null; then
    bench_log "warning: the load ended before the last flip did (raise FLIP_ALLOW_S): those flips saw no requests"
fi
wait "$LOAD_PID" || bench_log "the load generator exited with an error: $(tail -n 3 "$RESULTS/load.log")"
bench_forget "$LOAD_PID"
uptime >"$RESULTS/uptime-after.txt"

# ---------------------------------------------------------------- drift

for i in $(seq 1 300); do
    depth=$("$HANDOVER" status --json --admin "$ADMIN" | jq -r '.journal.depth')
    [[ $depth != 0 ]] || break
    sleep 0.2
done
"$HANDOVER" status --json --admin "$ADMIN" >"$RESULTS/status-after.json"
# The sync's retries and apply times per dataset, for where a pause went.
curl -fsS -H "Authorization: Bearer $HANDOVER_ADMIN_TOKEN" "$ADMIN/metrics" >"$RESULTS/metrics-after.txt" ||
    bench_log "cannot read $ADMIN/metrics"
vrc=0
"$HANDOVER" verify --json --admin "$ADMIN" >"$RESULTS/verify.json" 2>"$RESULTS/verify.log" || vrc=$?
bench_log "verify exit $vrc, drift $(jq -r '.drift' "$RESULTS/verify.json" 2>/dev/null || echo '?')"

# ---------------------------------------------------------------- analysis

# Per flip, from the generator's timeline: requests scheduled in the flip's
# window, the longest latency among them, failures; outside every window:
# the baseline latency.
start_unix=$(head -n 1 "$RESULTS/timeline.csv" | sed -n 's/.*start_unix_s=\([0-9.]*\).*/\1/p')
jq -r '"\(.flip) \(.t0) \(.t1)"' "$RESULTS/flips.jsonl" >"$WORK/windows.txt"
awk -F, -v start="$start_unix" -v margin="$WINDOW_MARGIN_S" -v base="$WORK/baseline.txt" '
    FNR == NR { split($0, w, " "); n++; id[n] = w[1]; from[n] = w[2] - margin; to[n] = w[3] + margin; next }
    /^#/ { next }
    {
        due = start + $1 / 1e6; lat = $2; ok = ($3 == "ok")
        hit = 0
        for (k = 1; k <= n; k++) if (due >= from[k] && due <= to[k]) { hit = k; break }
        if (hit) {
            count[hit]++; if (lat > max[hit]) max[hit] = lat; if (!ok) fail[hit]++
        } else {
            if (ok) print lat > base; else outside_fail++
        }
        total++; if (!ok) failed++
    }
    END {
        for (k = 1; k <= n; k++)
            printf "{\"flip\":%d,\"requests\":%d,\"max_latency_us\":%d,\"failed\":%d}\n", id[k], count[k], max[k], fail[k] + 0
        printf "{\"total\":%d,\"failed\":%d,\"failed_outside_flips\":%d}\n", total, failed + 0, outside_fail + 0
    }' FS=" " "$WORK/windows.txt" FS=, "$RESULTS/timeline.csv" >"$WORK/per-flip.jsonl"
sort -n "$WORK/baseline.txt" >"$WORK/baseline-sorted.txt"
pct() { awk -v q="$1" '{ v[NR] = $1 } END { if (NR == 0) { print 0; exit } i = int(q * NR + 0.999999); if (i < 1) i = 1; print v[i] }' "$WORK/baseline-sorted.txt"; }
baseline=$(jq -n --arg p50 "$(pct 0.5)" --arg p99 "$(pct 0.99)" --arg max "$(pct 1.0)" \
    '{p50_us: ($p50|tonumber), p99_us: ($p99|tonumber), max_us: ($max|tonumber)}')

jq -n \
    --slurpfile machine "$RESULTS/machine.json" \
    --slurpfile flips "$RESULTS/flips.jsonl" \
    --slurpfile seen "$WORK/per-flip.jsonl" \
    --slurpfile load "$RESULTS/load.json" \
    --slurpfile verify <(cat "$RESULTS/verify.json" 2>/dev/null || echo '{}') \
    --argjson baseline "$baseline" --arg rate "$RATE" --arg vrc "$vrc" \
    --arg up0 "$(cat "$RESULTS/uptime-before.txt")" --arg up1 "$(cat "$RESULTS/uptime-after.txt")" \
    -f <(
        cat <<'JQ'
def pct(q): sort | if length == 0 then null else .[((q * length) | ceil | if . < 1 then 1 else . end) - 1] end;
($seen | map(select(.flip != null))) as $per
| ($seen | map(select(.total != null)) | first) as $totals
| [$flips[] | . as $f | ($per[] | select(.flip == $f.flip)) as $s
   | {flip, verb, outcome, pause_ms, held, rejected, reason,
      command_ms: ((.t1 - .t0) * 1000 | round),
      requests_in_window: $s.requests, max_latency_ms: ($s.max_latency_us / 1000 | . * 10 | round / 10),
      failed: $s.failed}] as $rows
| {
  machine: $machine[0], rate: ($rate|tonumber), load: {before: $up0, after: $up1},
  flips: $rows,
  pause_ms_reported: {p50: ([$rows[].pause_ms] | pct(0.5)), p99: ([$rows[].pause_ms] | pct(0.99)), max: ([$rows[].pause_ms] | max)},
  max_latency_in_flip_ms: {p50: ([$rows[].max_latency_ms] | pct(0.5)), p99: ([$rows[].max_latency_ms] | pct(0.99)), max: ([$rows[].max_latency_ms] | max)},
  baseline_latency_outside_flips: $baseline,
  flips_ok: ([$rows[] | select(.outcome == "cut-over" or .outcome == "rolled-back")] | length),
  client: {requests: $totals.total, failed: $totals.failed, failed_outside_flips: $totals.failed_outside_flips,
           report: ($load[0] | {requests, errors, error_kinds, timeouts, achieved_rps, latency_us, send_lag_us,
                                 cpu_us_per_request, other_load, first_error})},
  verify: {exit_code: ($vrc|tonumber), drift: $verify[0].drift,
           datasets: ($verify[0].datasets // {} | map_values({primary, secondary, matching, mismatched, missing_on_target, extra_on_target, in_flight}))}
}
| .verdicts = {
    pause_p99_le_1s: (if .max_latency_in_flip_ms.p99 == null then "NOT DETERMINED"
                      elif .max_latency_in_flip_ms.p99 <= 1000 then "MET" else "MISSED" end),
    zero_client_errors: (if .client.failed == 0 and .client.report.errors == 0 and .client.report.timeouts == 0 then "MET" else "MISSED" end),
    zero_drift: (if .verify.drift == 0 and .verify.exit_code == 0 then "MET" else "MISSED" end),
    every_flip_flipped: (if .flips_ok == (.flips | length) then "yes" else "no" end)}
JQ
    ) >"$RESULTS/summary.json"

{
    echo
    echo "== cutover under $RATE trigger writes/s ($([[ $MIX == 1 ]] && echo "the mix" || echo "client registrations")), $FLIPS flips every ${GAP_S}s, sync = $SYNC, target latency $TARGET_LATENCY_MS ms"
    jq -r '.machine | "   \(.nproc) x \(.cpu), kernel \(.kernel), commit \(.commit)"' "$RESULTS/summary.json"
    echo
    printf '%-5s %-9s %-12s %9s %6s %9s %12s %7s %9s\n' flip verb outcome "pause ms" held rejected "max lat ms" failed "cmd ms"
    jq -r '.flips[] | [.flip, .verb, .outcome, .pause_ms, .held, .rejected, .max_latency_ms, .failed, .command_ms] | @tsv' \
        "$RESULTS/summary.json" | while IFS=$'\t' read -r a b c d e f g h i; do
        printf '%-5s %-9s %-12s %9s %6s %9s %12s %7s %9s\n' "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$i"
    done
    jq -r '
        "pause reported by handover (ms): p50 \(.pause_ms_reported.p50) p99 \(.pause_ms_reported.p99) max \(.pause_ms_reported.max)",
        "longest latency of a request scheduled during a flip (ms): p50 \(.max_latency_in_flip_ms.p50) p99 \(.max_latency_in_flip_ms.p99) max \(.max_latency_in_flip_ms.max)",
        "latency outside the flips (us): p50 \(.baseline_latency_outside_flips.p50_us) p99 \(.baseline_latency_outside_flips.p99_us) max \(.baseline_latency_outside_flips.max_us)",
        "client: \(.client.requests) requests, \(.client.failed) failed (\(.client.failed_outside_flips) outside flips), generator: errors \(.client.report.errors) \(.client.report.error_kinds) timeouts \(.client.report.timeouts), other load \(.client.report.other_load) cores, send lag p99 \(.client.report.send_lag_us.p99) us",
        "verify after: exit \(.verify.exit_code), drift \(.verify.drift)",
        "verdicts: pause p99 <= 1 s: \(.verdicts.pause_p99_le_1s); zero client errors: \(.verdicts.zero_client_errors); zero drift: \(.verdicts.zero_drift); every flip flipped: \(.verdicts.every_flip_flipped)"' \
        "$RESULTS/summary.json"
    echo "raw results: $RESULTS"
} | tee "$RESULTS/summary.txt"
