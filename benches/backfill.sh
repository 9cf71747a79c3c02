#!/usr/bin/env bash
# Backfill and verify benchmark (DESIGN.md section 8: backfill >= 5,000
# records/s against the emulator, handover's RSS flat and <= 64 MiB at 1 M
# records; verify: entities per second). What and why: benches/README.md,
# section "Backfill and verify".
#
# Every run starts from scratch: a source Connect2id emulator seeded with N
# records per dataset (clients, authorizations, sessions), an empty target
# emulator with the same JWK set (so SIDs are portable), and `handover serve`
# in front with a generated config (temp journal dir, random journal key).
# Then `handover backfill start`, sampling `handover status --json`, the
# RSS of the `handover serve` process and the CPU time of all three
# processes every second until the backfill is done; then `handover verify
# --json`, timed, which must report drift 0.
#
#   bash benches/backfill.sh                          # N = 1,000,000 per dataset
#   N=200000 CONCURRENCY="32 64 128" REPEAT=3 bash benches/backfill.sh
#   N=200000 COUNT_FIRST="true false" REPEAT=3 bash benches/backfill.sh
#
# Knobs (environment):
#   N=1000000            records per dataset on the source (3 N records in all)
#   CONCURRENCY="32"     [backfill] concurrency; a list runs one scenario each
#   COUNT_FIRST="true"   [backfill] count_first; a list runs one scenario each
#   REPEAT=1             runs per scenario (round-robin across scenarios, so
#                        a burst of load from other programs hits all alike)
#   VERIFY=1             run `handover verify` after each backfill (0: skip)
#   SAMPLE_S=1           sampling interval, seconds
#   TIMEOUT_S=5400       give up on a backfill (or a verify) after this long
#   PERF=0               1: `perf record -e cpu-clock` handover during the
#                        first backfill (software event; needs perf)
#   SKIP_BUILD=0         1: use target/release/handover as it is
#   KEEP_TMP=0           1: keep the temp dirs (logs, journal, config)
#   RESULTS=benches/results/backfill-<timestamp>   where the JSON goes
#
# Output: a summary table on stdout; $RESULTS/summary.json (every run, every
# derived figure, the machine facts), and per run $RESULTS/<run>/ with the
# raw samples (samples.jsonl, verify-samples.jsonl), the handover log (JSON
# lines), the verify report and `top` snapshots.
#
# Everything started here is stopped on exit (trap), by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000000}
CONCURRENCY=${CONCURRENCY:-32}
COUNT_FIRST=${COUNT_FIRST:-true}
REPEAT=${REPEAT:-1}
VERIFY=${VERIFY:-1}
SAMPLE_S=${SAMPLE_S:-1}
TIMEOUT_S=${TIMEOUT_S:-5400}
PERF=${PERF:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=${RESULTS:-benches/results/backfill-$STAMP}
BIN=$PWD/target/release/handover
CLK_TCK=$(getconf CLK_TCK)
DATASETS=(clients authorizations sessions)

log() { printf '[backfill-bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in jq curl openssl top getconf; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

# ---------------------------------------------------------------- cleanup

PIDS=()
TMPDIRS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    if [[ $KEEP_TMP != 1 ]]; then
        local dir
        for dir in "${TMPDIRS[@]}"; do
            rm -rf "$dir"
        done
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stops the processes of one run (by PID) and forgets them.
stop_run() {
    local pid
    for pid in "$@"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        wait "$pid" 2>/dev/null || true
    done
    local keep=() p
    for p in "${PIDS[@]}"; do
        [[ " $* " == *" $p "* ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# ---------------------------------------------------------------- helpers

now() { date +%s.%N; }

# CPU ticks (user + system) of one process.
proc_ticks() {
    local f
    read -ra f <"/proc/$1/stat" 2>/dev/null || { echo 0; return; }
    # Fields 14 and 15 (utime, stime); the comm field has no spaces here.
    echo $((f[13] + f[14]))
}

# Machine-wide CPU ticks: "busy total steal".
machine_ticks() {
    local cpu user nice system idle iowait irq softirq steal rest
    read -r cpu user nice system idle iowait irq softirq steal rest </proc/stat
    local total=$((user + nice + system + idle + iowait + irq + softirq + steal))
    echo "$((total - idle - iowait)) $total $steal"
}

rss_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# A free TCP port on 127.0.0.1 (nothing answers a connect to it).
free_port() {
    local port
    for port in $(shuf -i 20000-60000 -n 100); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    die "no free port"
}

# Waits for an emulator's "listening" log line; prints its address.
emulator_addr() {
    local logfile=$1 i addr
    for i in $(seq 1 300); do
        addr=$(jq -r 'select(.message == "connect2id emulator listening") | .addr' "$logfile" 2>/dev/null | head -1)
        if [[ -n $addr ]]; then
            echo "$addr"
            return
        fi
        sleep 0.1
    done
    die "emulator did not start: $(tail -3 "$logfile")"
}

# `top` over one second (the second frame: current, not since-boot, shares),
# the 15 busiest processes, wide enough to tell other engineers' jobs apart.
top_snapshot() {
    top -b -c -n 2 -d 1 -w 220 2>/dev/null | awk '/^top - /{frame++} frame == 2' | head -22
}

machine_facts() {
    jq -n \
        --arg cpu "$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)" \
        --arg nproc "$(nproc)" \
        --arg mem "$(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)" \
        --arg kernel "$(uname -r)" \
        --arg os "$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")" \
        --arg rustc "$(rustc --version 2>/dev/null)" \
        --arg commit "$(git rev-parse --short HEAD 2>/dev/null)" \
        --arg dirty "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l)" \
        '{cpu: $cpu, nproc: ($nproc|tonumber), memory: $mem, kernel: $kernel, os: $os,
          rustc: $rustc, commit: $commit, src_dirty_files: ($dirty|tonumber)}'
}

# ---------------------------------------------------------------- build

if [[ $SKIP_BUILD != 1 ]]; then
    log "building handover (release)"
    cargo build --release --locked --bin handover >&2
fi
[[ -x $BIN ]] || die "$BIN missing"
mkdir -p "$RESULTS"
machine_facts >"$RESULTS/machine.json"
log "results in $RESULTS"

# ---------------------------------------------------------------- one run

# run_one RUN_ID CONCURRENCY COUNT_FIRST: writes $RESULTS/RUN_ID/result.json
run_one() {
    local run=$1 conc=$2 count_first=$3
    local out=$RESULTS/$run
    mkdir -p "$out"
    local tmp
    tmp=$(mktemp -d /tmp/handover-backfill.XXXXXX)
    TMPDIRS+=("$tmp")
    mkdir -p "$tmp/journal"

    local src_token tgt_token
    src_token=source-$(openssl rand -hex 8)
    tgt_token=target-$(openssl rand -hex 8)
    export HANDOVER_ADMIN_TOKEN=admin-$(openssl rand -hex 16)
    export HANDOVER_SOURCE_TOKEN=$src_token HANDOVER_TARGET_TOKEN=$tgt_token
    HANDOVER_JOURNAL_KEY=$(openssl rand -hex 32)
    export HANDOVER_JOURNAL_KEY

    # Emulators: the source creates the JWK set, the target loads the same.
    "$BIN" --log-format json emulate --kind connect2id --listen 127.0.0.1:0 \
        --api-token "$src_token" --seed "$N" --base-path /c2id --jwks "$tmp/jwks.json" \
        2>"$tmp/source.log" >/dev/null &
    local src_pid=$!
    PIDS+=("$src_pid")
    local src_addr
    src_addr=$(emulator_addr "$tmp/source.log")
    "$BIN" --log-format json emulate --kind connect2id --listen 127.0.0.1:0 \
        --api-token "$tgt_token" --base-path /c2id --jwks "$tmp/jwks.json" \
        2>"$tmp/target.log" >/dev/null &
    local tgt_pid=$!
    PIDS+=("$tgt_pid")
    local tgt_addr
    tgt_addr=$(emulator_addr "$tmp/target.log")

    local admin_port proxy_port
    admin_port=$(free_port)
    proxy_port=$(free_port)
    local admin=http://127.0.0.1:$admin_port
    cat >"$tmp/handover.toml" <<EOF
# Generated by benches/backfill.sh
[proxy]
listen = "127.0.0.1:$proxy_port"

[admin]
listen = "127.0.0.1:$admin_port"
token_env = "HANDOVER_ADMIN_TOKEN"

[source]
kind = "connect2id"
url = "http://$src_addr/c2id"
token_env = "HANDOVER_SOURCE_TOKEN"

[target]
kind = "connect2id"
url = "http://$tgt_addr/c2id"
token_env = "HANDOVER_TARGET_TOKEN"

[journal]
dir = "$tmp/journal"
payload_key_env = "HANDOVER_JOURNAL_KEY"

[sync]
datasets = ["clients", "authorizations", "sessions"]

[backfill]
concurrency = $conc
count_first = $count_first
EOF
    cp "$tmp/handover.toml" "$out/handover.toml"
    "$BIN" --log-format json serve -c "$tmp/handover.toml" 2>"$tmp/handover.log" >/dev/null &
    local h_pid=$!
    PIDS+=("$h_pid")
    local i
    for i in $(seq 1 100); do
        curl -fs "$admin/livez" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fs "$admin/livez" >/dev/null || die "handover did not start: $(tail -3 "$tmp/handover.log")"

    log "run $run: N=$N concurrency=$conc count_first=$count_first (source pid $src_pid, target pid $tgt_pid, handover pid $h_pid)"
    uptime >"$out/uptime-before.txt"
    top_snapshot >"$out/top-before.txt" || true

    # ---- backfill
    local perf_pid=""
    if [[ $PERF == 1 && $run == run-01-* ]] && command -v perf >/dev/null; then
        perf record -e cpu-clock -F 499 -g -p "$h_pid" -o "$out/perf.data" 2>"$out/perf.log" >/dev/null &
        perf_pid=$!
        PIDS+=("$perf_pid")
        sleep 0.5
    fi
    local samples=$out/samples.jsonl
    : >"$samples"
    local m0 t_start
    m0=$(machine_ticks)
    local c0_src c0_tgt c0_h
    c0_src=$(proc_ticks "$src_pid")
    c0_tgt=$(proc_ticks "$tgt_pid")
    c0_h=$(proc_ticks "$h_pid")
    t_start=$(now)
    "$BIN" backfill start --json --admin "$admin" >"$out/backfill-start.json"
    local state=running status settled mid_done=0 total=$((3 * N)) top_pid=""
    while :; do
        sleep "$SAMPLE_S"
        status=$("$BIN" status --json --admin "$admin" 2>/dev/null || echo '{}')
        [[ -n $status ]] || status='{}'
        printf '{"t":%s,"rss_kb":%s,"target_rss_kb":%s,"source_rss_kb":%s,"ticks":{"source":%s,"target":%s,"handover":%s},"machine":"%s","status":%s}\n' \
            "$(now)" "$(rss_kb "$h_pid" VmRSS)" "$(rss_kb "$tgt_pid" VmRSS)" "$(rss_kb "$src_pid" VmRSS)" \
            "$(proc_ticks "$src_pid")" "$(proc_ticks "$tgt_pid")" "$(proc_ticks "$h_pid")" \
            "$(machine_ticks)" "$status" >>"$samples"
        case $status in
            *'"state":"done"'*) state=done ;;
            *'"state":"failed"'*) state=failed ;;
            *'"state":"idle"'*) state=idle ;;
        esac
        [[ $state == running ]] || break
        if [[ $mid_done == 0 ]]; then
            settled=$(jq -r '[.backfill.datasets[]? | .copied + .skipped + .failed] | add // 0' <<<"$status")
            if ((settled * 2 >= total)); then
                mid_done=1
                top_snapshot >"$out/top-mid.txt" &
                top_pid=$!
            fi
        fi
        if (($(date +%s) - ${t_start%.*} > TIMEOUT_S)); then
            log "backfill timed out after ${TIMEOUT_S}s"
            state=timeout
            break
        fi
    done
    local t_end
    t_end=$(now)
    local m1
    m1=$(machine_ticks)
    local c1_src c1_tgt c1_h
    c1_src=$(proc_ticks "$src_pid")
    c1_tgt=$(proc_ticks "$tgt_pid")
    c1_h=$(proc_ticks "$h_pid")
    local hwm_backfill rss_end
    hwm_backfill=$(rss_kb "$h_pid" VmHWM)
    rss_end=$(rss_kb "$h_pid" VmRSS)
    [[ -z $top_pid ]] || wait "$top_pid" 2>/dev/null || true # the mid-run top snapshot
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        stop_run "$perf_pid"
        perf report -i "$out/perf.data" --no-children --stdio --sort symbol 2>/dev/null |
            grep -v '^#' | grep -v '^$' | head -60 >"$out/perf-top.txt" || true
    fi
    uptime >"$out/uptime-after.txt"
    log "run $run: backfill $state after $(awk -v a="$t_start" -v b="$t_end" 'BEGIN{printf "%.1f", b-a}')s, handover VmHWM ${hwm_backfill} kB"

    # ---- verify
    local v_state=skipped v_rc="" t_vstart="" t_vend="" hwm_verify="" m2="" m3=""
    local v0_src="" v0_tgt="" v0_h="" v1_src="" v1_tgt="" v1_h=""
    if [[ $VERIFY == 1 && $state == done ]]; then
        top_snapshot >"$out/top-before-verify.txt" || true
        local vsamples=$out/verify-samples.jsonl
        : >"$vsamples"
        m2=$(machine_ticks)
        v0_src=$(proc_ticks "$src_pid")
        v0_tgt=$(proc_ticks "$tgt_pid")
        v0_h=$(proc_ticks "$h_pid")
        t_vstart=$(now)
        "$BIN" verify --json --admin "$admin" >"$out/verify.json" 2>/dev/null &
        local v_pid=$!
        PIDS+=("$v_pid")
        local vmid=0
        top_pid=""
        while kill -0 "$v_pid" 2>/dev/null; do
            sleep "$SAMPLE_S"
            local vstatus
            vstatus=$(curl -fs -H "Authorization: Bearer $HANDOVER_ADMIN_TOKEN" "$admin/verify" 2>/dev/null |
                jq -c 'del(.report)' 2>/dev/null || echo '{}')
            [[ -n $vstatus ]] || vstatus='{}'
            printf '{"t":%s,"rss_kb":%s,"ticks":{"source":%s,"target":%s,"handover":%s},"machine":"%s","verify":%s}\n' \
                "$(now)" "$(rss_kb "$h_pid" VmRSS)" \
                "$(proc_ticks "$src_pid")" "$(proc_ticks "$tgt_pid")" "$(proc_ticks "$h_pid")" \
                "$(machine_ticks)" "$vstatus" >>"$vsamples"
            if [[ $vmid == 0 && $vstatus == *'"dataset":"authorizations"'* ]]; then
                vmid=1
                top_snapshot >"$out/top-verify.txt" &
                top_pid=$!
            fi
            if (($(date +%s) - ${t_vstart%.*} > TIMEOUT_S)); then
                log "verify timed out after ${TIMEOUT_S}s"
                break
            fi
        done
        v_rc=0
        wait "$v_pid" || v_rc=$?
        stop_run "$v_pid"
        t_vend=$(now)
        m3=$(machine_ticks)
        v1_src=$(proc_ticks "$src_pid")
        v1_tgt=$(proc_ticks "$tgt_pid")
        v1_h=$(proc_ticks "$h_pid")
        hwm_verify=$(rss_kb "$h_pid" VmHWM)
        [[ -z $top_pid ]] || wait "$top_pid" 2>/dev/null || true
        if [[ $v_rc == 0 ]]; then v_state=ok; else v_state=drift-or-error; fi
        log "run $run: verify exit $v_rc after $(awk -v a="$t_vstart" -v b="$t_vend" 'BEGIN{printf "%.1f", b-a}')s"
    fi
    local v0_json="" v1_json=""
    if [[ -n $v0_src ]]; then
        v0_json="{\"source\":$v0_src,\"target\":$v0_tgt,\"handover\":$v0_h}"
        v1_json="{\"source\":$v1_src,\"target\":$v1_tgt,\"handover\":$v1_h}"
    fi
    local rss_target_end rss_source_end
    rss_target_end=$(rss_kb "$tgt_pid" VmRSS)
    rss_source_end=$(rss_kb "$src_pid" VmRSS)

    stop_run "$h_pid" "$tgt_pid" "$src_pid"
    cp "$tmp/handover.log" "$out/handover.log"
    cp "$tmp/source.log" "$out/source.log"
    cp "$tmp/target.log" "$out/target.log"

    # ---- derive the figures (jq over the samples and the JSON log)
    jq -n \
        --arg run "$run" --argjson n "$N" --argjson conc "$conc" --argjson count_first "$count_first" \
        --argjson tck "$CLK_TCK" --arg state "$state" \
        --argjson t_start "$t_start" --argjson t_end "$t_end" \
        --arg m0 "$m0" --arg m1 "$m1" \
        --argjson c0 "{\"source\":$c0_src,\"target\":$c0_tgt,\"handover\":$c0_h}" \
        --argjson c1 "{\"source\":$c1_src,\"target\":$c1_tgt,\"handover\":$c1_h}" \
        --argjson hwm_backfill "${hwm_backfill:-0}" --argjson rss_end "${rss_end:-0}" \
        --arg v_state "$v_state" --arg v_rc "$v_rc" --arg t_vstart "$t_vstart" --arg t_vend "$t_vend" \
        --arg m2 "$m2" --arg m3 "$m3" \
        --arg v0 "$v0_json" --arg v1 "$v1_json" \
        --arg hwm_verify "$hwm_verify" \
        --argjson rss_target_end "${rss_target_end:-0}" --argjson rss_source_end "${rss_source_end:-0}" \
        --arg uptime_before "$(cat "$out/uptime-before.txt")" --arg uptime_after "$(cat "$out/uptime-after.txt")" \
        --slurpfile samples "$samples" \
        --slurpfile hlog <(jq -c 'select(.message != null)' "$out/handover.log" 2>/dev/null) \
        --slurpfile vsamples <(cat "$out/verify-samples.jsonl" 2>/dev/null) \
        --slurpfile vreport <(cat "$out/verify.json" 2>/dev/null) \
        -f <(cat <<'JQ'
def ts: (sub("\\.[0-9]+Z$"; "Z") | fromdateiso8601)
        + ((capture("\\.(?<f>[0-9]+)Z$").f // "0") | "0." + . | tonumber);
def mt: split(" ") | map(tonumber) | {busy: .[0], total: .[1], steal: .[2]};
def r1: . * 10 | round / 10;
def r0: round;
def at_progress($curve; x): ($curve | map(select(.p >= x)) | first // ($curve | last))
    | {progress: (.p * 100 | round), rss_mib: (.rss_kb / 1024 | r1), t_s: ((.t - $t_start) | r1)};
def cpu(c0; c1; m0; m1; wall):
    (m1.total - m0.total) as $all
  | (m1.busy - m0.busy) as $busy
  | {source: ((c1.source - c0.source) / $tck), target: ((c1.target - c0.target) / $tck),
     handover: ((c1.handover - c0.handover) / $tck)} as $s
  | ($busy / $tck) as $busy_s
  | {wall_s: wall,
     cores_used: {source: ($s.source / wall), target: ($s.target / wall), handover: ($s.handover / wall),
                  others: ((($busy_s - $s.source - $s.target - $s.handover) / wall) | if . < 0 then 0 else . end),
                  machine: ($busy_s / wall), steal: (((m1.steal - m0.steal) / $tck) / wall)}
                 | map_values(. * 100 | round / 100),
     cpu_seconds: ($s | map_values(. * 100 | round / 100)),
     machine_cores: (($all / $tck) / wall | round)};
($hlog | map(select(.timestamp != null) | . + {at: (.timestamp | ts)})) as $log
| ($log | map(select(.message == "backfill control" and .operation == "/backfill/start")) | first | .at) as $bf_start
| ($log | map(select(.message == "backfill done")) | first | .at) as $bf_done
| ($log | map(select(.message == "backfill copying")) | map({key: .dataset, value: .at}) | from_entries) as $copying
| ($log | map(select(.message == "backfill dataset done")) | map({key: .dataset, value: .}) | from_entries) as $done
| ($samples | last | .status.backfill // {}) as $final
| ($final.datasets // {}) as $fd
| ([$fd[] | .copied] | add // 0) as $copied_all
| ($final.elapsed_ms // 0) as $elapsed_ms
# Per dataset, from the log: the dataset starts when the previous one ends
# (or at `backfill start`); with count_first the counting pass comes first.
| (["clients", "authorizations", "sessions"]) as $order
| ([range(0; $order | length)] | map(
      $order[.] as $d
    | (if . == 0 then $bf_start else $done[$order[. - 1]].at end) as $from
    | ($done[$d].at) as $to
    | ($copying[$d]) as $copy_at
    | {total: $fd[$d].total, copied: $fd[$d].copied, skipped: $fd[$d].skipped, failed: $fd[$d].failed,
       wall_s: (if $from and $to then (($to - $from) * 1000 | round / 1000) else null end),
       count_s: (if $from and $copy_at then (($copy_at - $from) * 1000 | round / 1000) else null end),
       copy_s: (if $copy_at and $to then (($to - $copy_at) * 1000 | round / 1000) else null end)}
    | .records_per_s = (if .wall_s and .wall_s > 0 then (.copied / .wall_s | round) else null end)
    | .copy_records_per_s = (if .copy_s and .copy_s > 0 then (.copied / .copy_s | round) else null end)
    # Cross-check from the 1 s samples: first to last sample where it moved.
    | .sampled_records_per_s = (
          ([$samples[] | {t, c: (.status.backfill.datasets[$d].copied // 0)}]
           | map(select(.c > 0 and .c < ($fd[$d].copied // 0)))) as $mid
        | if ($mid | length) >= 2 then (($mid | last).c - ($mid | first).c) / (($mid | last).t - ($mid | first).t) | round else null end)
    # CPU per process over the dataset (the samples inside its window).
    | .cpu = (
          ($samples | map(select(.t >= $from and .t <= $to))) as $in
        | if ($in | length) >= 2 then
              ($in | first) as $a | ($in | last) as $b | ($b.t - $a.t) as $w
            | (($a.machine | mt)) as $ma | (($b.machine | mt)) as $mb
            | {source: (($b.ticks.source - $a.ticks.source) / $tck / $w),
               target: (($b.ticks.target - $a.ticks.target) / $tck / $w),
               handover: (($b.ticks.handover - $a.ticks.handover) / $tck / $w),
               machine: (($mb.busy - $ma.busy) / $tck / $w)}
            | .others = ([.machine - .source - .target - .handover, 0] | max)
            | map_values(. * 100 | round / 100) as $cores
            | ($to - $from) as $dw
            | {cores_used: $cores,
               us_per_record: ($cores | {source, target, handover}
                                      | map_values(. * $dw * 1e6 / ($fd[$d].copied // 1) | round))}
          else null end)
    | {key: $d, value: .}) | from_entries) as $per
# RSS curve by progress (settled records / all records): the first sample at or past each mark.
| ($samples | map({t, rss_kb, target_rss_kb, p: (([.status.backfill.datasets[]? | .copied + .skipped + .failed] | add // 0) / (3 * $n))})) as $curve
| ($curve | map(select(.p >= 0.05)) | map(.rss_kb)) as $steady
| {
  run: $run, n_per_dataset: $n, records: (3 * $n), concurrency: $conc, count_first: $count_first,
  load: {before: $uptime_before, after: $uptime_after},
  backfill: {
    state: $state, copied: $copied_all, elapsed_ms: $elapsed_ms,
    records_per_s: (if $elapsed_ms > 0 then ($copied_all / ($elapsed_ms / 1000) | round) else null end),
    wall_s: (($t_end - $t_start) | . * 10 | round / 10),
    log_s: (if $bf_start and $bf_done then ($bf_done - $bf_start) | . * 1000 | round / 1000 else null end),
    datasets: $per,
    rss: {
      vmhwm_mib: ($hwm_backfill / 1024 | r1),
      sampled_max_mib: (($curve | map(.rss_kb) | max // 0) / 1024 | r1),
      end_mib: ($rss_end / 1024 | r1),
      at_10: at_progress($curve; 0.10), at_50: at_progress($curve; 0.50), at_100: at_progress($curve; 1.0),
      steady_min_mib: (($steady | min // 0) / 1024 | r1), steady_max_mib: (($steady | max // 0) / 1024 | r1)
    },
    target_rss_mib_end: (($curve | last | .target_rss_kb // 0) / 1024 | r0),
    cpu: cpu($c0; $c1; ($m0 | mt); ($m1 | mt); ($t_end - $t_start))
  },
  verify: (if $v_state == "skipped" then {state: "skipped"} else
    ($vreport | first // {}) as $rep
    | ($log | map(select(.message == "verify started")) | last | .at) as $vs
    | ($log | map(select(.message == "verify finished")) | last | .at) as $ve
    | ([$rep.datasets[]? | .primary] | add // 0) as $compared
    | ([$rep.datasets[]? | .primary + .secondary] | add // 0) as $streamed
    | (($t_vend | tonumber) - ($t_vstart | tonumber)) as $cli_s
    | (if $vs and $ve then $ve - $vs else $cli_s end) as $vwall
    # Per dataset, from the 1 s samples: first and last sample naming it.
    | ($vsamples | map(select(.verify.dataset != null))) as $vsm
    | {state: $v_state, exit_code: ($v_rc | tonumber? // null), drift: $rep.drift,
       records_compared: $compared, records_streamed_both_sides: $streamed,
       server_s: (if $vs and $ve then ($ve - $vs) | . * 1000 | round / 1000 else null end),
       cli_wall_s: ($cli_s | . * 1000 | round / 1000),
       entities_per_s: (if $vwall > 0 then ($compared / $vwall | round) else null end),
       datasets: ($rep.datasets // {} | map_values({primary, secondary, matching, mismatched, missing_on_target, extra_on_target, in_flight})),
       dataset_seconds_sampled: ($vsm | group_by(.verify.dataset) | map({key: .[0].verify.dataset, value: ((last.t - first.t) | r1)}) | from_entries),
       rss: {vmhwm_mib: (($hwm_verify | tonumber? // 0) / 1024 | r1),
             sampled_max_mib: (([$vsamples[] | .rss_kb] | max // 0) / 1024 | r1)},
       cpu: (if $v0 != "" then cpu(($v0 | fromjson); ($v1 | fromjson); ($m2 | mt); ($m3 | mt); $cli_s) else null end)}
    end),
  emulator_rss_mib_end: {source: ($rss_source_end / 1024 | r0), target: ($rss_target_end / 1024 | r0)}
}
JQ
) >"$out/result.json"
}

# ---------------------------------------------------------------- scenarios

read -ra CONCS <<<"$CONCURRENCY"
read -ra CFS <<<"$COUNT_FIRST"
k=0
for r in $(seq 1 "$REPEAT"); do
    for cf in "${CFS[@]}"; do
        for c in "${CONCS[@]}"; do
            k=$((k + 1))
            run_one "$(printf 'run-%02d-c%s-cf%s-r%s' "$k" "$c" "$cf" "$r")" "$c" "$cf"
        done
    done
done

# ---------------------------------------------------------------- summary

jq -s --slurpfile machine "$RESULTS/machine.json" \
    '{machine: $machine[0], command_env: $ENV | with_entries(select(.key | IN("N","CONCURRENCY","COUNT_FIRST","REPEAT","VERIFY","SAMPLE_S","PERF"))), runs: .}' \
    "$RESULTS"/run-*/result.json >"$RESULTS/summary.json"

{
    echo
    echo "== backfill and verify: N = $N per dataset ($((3 * N)) records), $(jq -r '.machine | "\(.nproc) x \(.cpu), \(.memory), kernel \(.kernel), commit \(.commit)"' "$RESULTS/summary.json")"
    echo
    printf '%-26s %9s %9s %9s %9s %9s %8s %8s %8s %8s %6s %6s %6s %6s %9s %6s\n' \
        run "clients/s" "authz/s" "sess/s" "all/s" "copy/s*" "hwm MiB" "rss10%" "rss50%" "rss100%" \
        "src" "tgt" "hand" "other" "verify/s" drift
    jq -r '.runs[] |
        [.run,
         .backfill.datasets.clients.records_per_s, .backfill.datasets.authorizations.records_per_s,
         .backfill.datasets.sessions.records_per_s, .backfill.records_per_s,
         ([.backfill.datasets[] | .copy_records_per_s] | add / length | round),
         .backfill.rss.vmhwm_mib, .backfill.rss.at_10.rss_mib, .backfill.rss.at_50.rss_mib, .backfill.rss.at_100.rss_mib,
         .backfill.cpu.cores_used.source, .backfill.cpu.cores_used.target, .backfill.cpu.cores_used.handover,
         .backfill.cpu.cores_used.others,
         (.verify.entities_per_s // "-"), (.verify.drift // "-")] | @tsv' "$RESULTS/summary.json" |
        while IFS=$'\t' read -r run a b c d e f g h i j k2 l m o p; do
            printf '%-26s %9s %9s %9s %9s %9s %8s %8s %8s %8s %6s %6s %6s %6s %9s %6s\n' \
                "$run" "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$i" "$j" "$k2" "$l" "$m" "$o" "$p"
        done
    echo
    echo "records/s per dataset = copied / dataset wall time (incl. the count pass when count_first);"
    echo "copy/s* = mean over datasets of copied / copy phase only; rssN% = handover VmRSS at N% of the records;"
    echo "src/tgt/hand/other = cores used during the backfill by the source emulator, the target emulator,"
    echo "handover, and every other program on the machine (of $(nproc))."
    echo
    jq -r '.runs as $r
        | "verdicts: backfill >= 5,000 records/s: " + (if ([$r[] | .backfill.records_per_s] | min) >= 5000 then "PASS" else "FAIL" end)
          + " (min \([$r[] | .backfill.records_per_s] | min))"
          + "; RSS <= 64 MiB: " + (if ([$r[] | .backfill.rss.vmhwm_mib, (.verify.rss.vmhwm_mib // 0)] | max) <= 64 then "PASS" else "FAIL" end)
          + " (max VmHWM \([$r[] | .backfill.rss.vmhwm_mib, (.verify.rss.vmhwm_mib // 0)] | max) MiB)"
          + "; verify drift 0: " + (if all($r[]; .verify.state == "skipped" or .verify.drift == 0) then "PASS" else "FAIL" end)' \
        "$RESULTS/summary.json"
    echo "raw results: $RESULTS/summary.json"
} | tee "$RESULTS/summary.txt"

if jq -e '.runs | all(.backfill.state == "done" and (.verify.state == "skipped" or .verify.drift == 0))' \
    "$RESULTS/summary.json" >/dev/null; then
    exit 0
fi
exit 1
