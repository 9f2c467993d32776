#!/usr/bin/env bash
# Side by side, interleaved in one run: pgbench directly against PostgreSQL, through PgBouncer
# (Debian's package and, when a binary is given or cached, a newer release) and through pgdecomp
# (phase 1, health checks on), all in transaction mode with the same pool size, in front of a
# main primary and its streaming replica on free loopback ports. Records per run TPS, latency
# average and percentiles (pgbench's per-transaction logs) and each proxy's CPU per transaction
# (/proc/<pid>/stat sampled every 0.25 s), over the window in which every client is logged in
# (pgbench runs DURATION + clients/40 s, since it logs its clients in one at a time; -C runs are
# measured whole), then prints the medians over rounds with pgdecomp's ratios and writes JSON.
# Optionally measures memory per idle client (VmRSS delta while N idle connections are held).
#
# Usage: benches/compare.sh [options]
#   --duration S        seconds per pgbench run (15)
#   --rounds N          rounds; each runs every workload on every target, one target later
#                       each round (2; as many rounds as targets runs each once in each place)
#   --workloads LIST    comma list of simple,extended,prepared,tpcb,connect,mix, "all" or "none"
#                       (all): -S -M simple|extended|prepared, TPC-B, -S -C (a SCRAM login per
#                       transaction), and a GitLab-like mix of main/ci reads and writes
#   --clients LIST      comma list of client counts, e.g. 1,32,256,1000 for a scale table (32)
#   --targets LIST      comma list of direct,pgbouncer-debian,pgbouncer-newest,pgdecomp (all found)
#   --pool N            server connections per pool, the same for every proxy (8)
#   --scale N           pgbench scale (10)
#   --idle N            also hold N idle connections to each proxy and report RSS per client (off)
#   --idle-used         each idle connection first runs one query (a client that has been busy);
#                       held 4 s before the RSS read (pgdecomp frees a busy period's state 1-2 s
#                       after a client's last request)
#   --reads WHERE       replica (default): pgdecomp sends reads outside a transaction to the
#                       replica, as phase 1 does; primary: pgdecomp lists no replica, so its reads
#                       run on the primary as PgBouncer's do and the servers do the same work
#                       (the TPS and the servers' CPU then compare the proxies alone)
#   --pgbouncer-newest PATH  a PgBouncer binary of the newest release (default: the highest
#                       version found as $BENCH_CACHE/pgbouncer-*/bin/pgbouncer, BENCH_CACHE
#                       defaulting to /work/cache); without one, that target is skipped
#   --pgdecomp PATH     a pgdecomp binary to use instead of building one (scripts/build-release:
#                       profile-guided, honouring CARGO_TARGET_DIR)
#   --baseline PATH     another pgdecomp binary (e.g. an earlier commit's) as target "baseline"
#   --out FILE          JSON result (target/bench-compare/compare-<time>.json)
#   --keep              keep the temporary directory with every log
# Env: AUTH=plain puts plaintext passwords in the auth file instead of the server's SCRAM
# verifier; UNKNOWN_TABLES=1 leaves pgbench's tables out of pgdecomp's dictionary.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$BENCH_DIR/../scripts/lib.sh"
# shellcheck source=benches/lib/compare-setup.sh
source "$BENCH_DIR/lib/compare-setup.sh"

DURATION=15 ROUNDS=2 WORKLOADS=all CLIENTS_LIST=32 TARGET_LIST='' POOL=8 SCALE=10 IDLE=0 IDLE_USED=()
READS=replica NEWEST_BIN=${PGBOUNCER_NEWEST:-} PGDECOMP_BIN='' BASELINE_BIN=${BASELINE:-} OUT='' KEEP=${KEEP:-}
while [ $# -gt 0 ]; do
    case $1 in
        --duration) DURATION=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --workloads) WORKLOADS=$2; shift 2 ;;
        --clients) CLIENTS_LIST=$2; shift 2 ;;
        --targets) TARGET_LIST=$2; shift 2 ;;
        --pool) POOL=$2; shift 2 ;;
        --scale) SCALE=$2; shift 2 ;;
        --idle) IDLE=$2; shift 2 ;;
        --idle-used) IDLE_USED=(--used --settle 4); shift ;;
        --reads) READS=$2; shift 2 ;;
        --pgbouncer-newest) NEWEST_BIN=$2; shift 2 ;;
        --pgdecomp) PGDECOMP_BIN=$2; shift 2 ;;
        --baseline) BASELINE_BIN=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case $READS in replica|primary) ;; *) die "--reads takes replica or primary" ;; esac
[ "$WORKLOADS" = all ] && WORKLOADS=simple,extended,prepared,tpcb,connect,mix
[ "$WORKLOADS" = none ] && WORKLOADS=
IFS=, read -r -a WORKLOAD_NAMES <<<"$WORKLOADS"
IFS=, read -r -a CLIENT_COUNTS <<<"$CLIENTS_LIST"
for w in "${WORKLOAD_NAMES[@]}"; do
    case $w in simple|extended|prepared|tpcb|connect|mix) ;; *) die "unknown workload: $w" ;; esac
done
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 7)' 2>/dev/null || die "python3 (3.7+) is required"

wanted() { [ -z "$TARGET_LIST" ] || [[ ",$TARGET_LIST," == *",$1,"* ]]; }

ensure_packages postgresql-15 postgresql-client-15 pgbouncer
if [ "$IDLE" -gt 0 ]; then
    ensure_packages python3-pip
    ensure_python_drivers
fi
DEBIAN_BIN=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
if [ -z "$NEWEST_BIN" ] && wanted pgbouncer-newest; then
    NEWEST_BIN=$(newest_cached_pgbouncer)
fi
if [ -z "$PGDECOMP_BIN" ] && wanted pgdecomp; then
    PGDECOMP_BIN=$(build_pgdecomp)
fi
! wanted pgdecomp || [ -x "$PGDECOMP_BIN" ] || die "no pgdecomp binary at $PGDECOMP_BIN"

TARGETS=()
wanted direct && TARGETS+=(direct)
wanted pgbouncer-debian && TARGETS+=(pgbouncer-debian)
if wanted pgbouncer-newest; then
    if [ -n "$NEWEST_BIN" ] && [ -x "$NEWEST_BIN" ] && [ -n "$(pgbouncer_version "$NEWEST_BIN")" ]; then
        TARGETS+=(pgbouncer-newest)
    else
        log "skipping pgbouncer-newest: no usable binary (pass --pgbouncer-newest PATH, a PgBouncer built from its newest release)"
    fi
fi
wanted pgdecomp && TARGETS+=(pgdecomp)
[ -n "$BASELINE_BIN" ] && TARGETS+=(baseline)

MAX_CLIENTS=$(printf '%s\n' "${CLIENT_COUNTS[@]}" | sort -n | tail -n1)
PROXY_MAX_CLIENTS=$(( (MAX_CLIENTS > IDLE ? MAX_CLIENTS : IDLE) + 100 ))
PG_MAX_CONNECTIONS=$(( MAX_CLIENTS + 8 * POOL + 100 ))
[ "$PG_MAX_CONNECTIONS" -ge 200 ] || PG_MAX_CONNECTIONS=200
raise_fd_limit $(( PROXY_MAX_CLIENTS + MAX_CLIENTS + 1024 ))

ROOT=$(mktemp -d "${TMPDIR:-/tmp}/pgdecomp-compare.XXXXXX")
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-$REPO_ROOT/target/bench-compare/compare-$STAMP.json}
mkdir -p "$(dirname "$OUT")"
P=$(free_port) R=$(free_port)
declare -A PORT PID
PROXY_PIDS=() BOUNCER_PIDS=()

# shellcheck disable=SC2317  # invoked by the traps below
cleanup() {
    trap - INT TERM EXIT
    local pid
    for pid in "${PROXY_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    for pid in "${BOUNCER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    pg_stop_topology "$ROOT" immediate
    if [ -n "$KEEP" ]; then log "kept $ROOT"; else rm -rf "$ROOT"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bench_pg_pair "$ROOT" "$P" "$R" "$PG_MAX_CONNECTIONS"
bench_seed "$ROOT" "$P" "$R" "$SCALE"
bench_userlist "$ROOT" "$P"
mkdir -p "$ROOT/runs"

NOT_APPLICABLE=()
for target in "${TARGETS[@]}"; do
    port=$(free_port)
    case $target in
        direct) port=$P ;;
        pgbouncer-debian|pgbouncer-newest)
            bin=$DEBIAN_BIN
            [ "$target" = pgbouncer-newest ] && bin=$NEWEST_BIN
            log "$target: PgBouncer $(pgbouncer_version "$bin") ($bin) on 127.0.0.1:$port"
            bench_start_pgbouncer "$target" "$bin" "$port" "$P" "$POOL" "$PROXY_MAX_CLIENTS"
            PID[$target]=$BOUNCER_PID
            BOUNCER_PIDS+=("$BOUNCER_PID")
            # Before 1.21 PgBouncer cannot pool named prepared statements in transaction mode.
            version_ge "$(pgbouncer_version "$bin")" 1.21 || NOT_APPLICABLE+=("prepared:$target")
            ;;
        pgdecomp|baseline)
            bin=$PGDECOMP_BIN
            [ "$target" = baseline ] && bin=$BASELINE_BIN
            log "$target: $bin on 127.0.0.1:$port"
            replica=$R
            [ "$READS" = primary ] && replica=
            bench_start_pgdecomp "$target" "$bin" "$port" "$P" "$replica" "$POOL" "$PROXY_MAX_CLIENTS"
            PID[$target]=$PGDECOMP_PID
            PROXY_PIDS+=("$PGDECOMP_PID")
            ;;
    esac
    PORT[$target]=$port
done

TICK=$(getconf CLK_TCK)
# machine_ticks: sets MACHINE_TICKS to the busy ticks of all cores so far (a variable, not
# output: no subshell per sample). /proc/stat's first line: user nice system idle iowait irq
# softirq steal.
machine_ticks() {
    local cpu
    read -r -a cpu </proc/stat
    MACHINE_TICKS=$((cpu[1] + cpu[2] + cpu[3] + cpu[6] + cpu[7] + cpu[8]))
}
# sample_cpu [PID]: "time proxy-ticks machine-busy-ticks proxy-user-ticks" every 0.25 s until
# killed (bash builtins only: no fork per sample). Without a PID (direct) the proxy's are 0.
sample_cpu() {
    local stat own user
    while :; do
        own=0 user=0
        if [ -n "${1:-}" ]; then
            read -r -a stat <"/proc/$1/stat" || return 0
            # Fields 14 and 15 (utime, stime); the command name in field 2 has no spaces here.
            own=$((stat[13] + stat[14])) user=${stat[13]}
        fi
        machine_ticks
        printf '%s %s %s %s\n' "$EPOCHREALTIME" "$own" "$MACHINE_TICKS" "$user"
        sleep 0.25
    done
}
# run_one ROUND CLIENTS WORKLOAD TARGET: one pgbench run, appended to runs.jsonl.
run_one() {
    local round=$1 clients=$2 workload=$3 target=$4 dir jobs=2 before='' after='' rc=0 args
    dir="$ROOT/runs/r$round-c$clients-$workload-$target"
    mkdir -p "$dir"
    [ "$clients" -ge 2 ] || jobs=1
    mapfile -t args < <(workload_args "$workload")
    # pgbench's -T includes its logins, made one at a time per thread: RAMP more seconds leave
    # about DURATION seconds with every client logged in (the window compare.py measures).
    local ramp=$(( (clients + 39) / 40 )) sampler
    [ -z "${PID[$target]:-}" ] || before=$(cpu_ticks "${PID[$target]}")
    sample_cpu "${PID[$target]:-}" >"$dir/cpu.samples" &
    sampler=$!
    PGPASSWORD=gitlab timeout $((DURATION + ramp + 300)) "$PG_BIN/pgbench" -h 127.0.0.1 -p "${PORT[$target]}" \
        -U gitlab -n -c "$clients" -j "$jobs" -T $((DURATION + ramp)) --log --log-prefix="$dir/tx" "${args[@]}" \
        gitlabhq_production >"$dir/pgbench.out" 2>&1 || rc=$?
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    if [ -n "$before" ]; then
        after=$(cpu_ticks "${PID[$target]}")
        machine_ticks
        printf '%s %s %s\n' "$EPOCHREALTIME" "$after" "$MACHINE_TICKS" >>"$dir/cpu.samples"
    fi
    local record=(--output "$dir/pgbench.out" --rc "$rc" --log-prefix "$dir/tx" --round "$round"
        --clients "$clients" --duration "$DURATION" --workload "$workload" --target "$target")
    [ "$workload" = connect ] && record+=(--whole-run)
    record+=(--cpu-samples "$dir/cpu.samples" --hz "$TICK")
    [ -z "$before" ] || record+=(--cpu-ticks $((after - before)))
    "$PYTHON" "$BENCH_DIR/compare.py" record "${record[@]}" >>"$ROOT/runs.jsonl"
    [ -n "$KEEP" ] || rm -f "$dir"/tx.*
    if [ "$rc" -ne 0 ] || ! grep -q 'number of failed transactions: 0 ' "$dir/pgbench.out" \
        || grep -q 'actually processed: 0$' "$dir/pgbench.out"; then
        log "run failed (rc $rc): $(tail -n 3 "$dir/pgbench.out" | tr '\n' ' ')"
        cp "$dir/pgbench.out" "$ROOT/failed-r$round-c$clients-$workload-$target.out"
        # The proxies' and servers' logs explain a failure: keep them past the cleanup.
        KEEP=1
        [ ! -f "$ROOT/$target.log" ] \
            || log "$target's warnings so far: $(grep -E 'WARN|ERROR' "$ROOT/$target.log" | tail -n 5 | tr '\n' ' ')"
    fi
}

if [ "$IDLE" -gt 0 ]; then
    # Before any pgbench run, so each proxy is measured from its freshly started footprint.
    for target in "${TARGETS[@]}"; do
        [ "$target" = direct ] && continue
        log "idle: $IDLE connections held to $target"
        "$PYTHON" "$BENCH_DIR/compare.py" idle --pid "${PID[$target]}" --port "${PORT[$target]}" \
            --n "$IDLE" --target "$target" --deadline $((60 + IDLE / 50)) "${IDLE_USED[@]}" | tee -a "$ROOT/idle.jsonl" >&2
        sleep 1
    done
fi

total=$(( ROUNDS * ${#CLIENT_COUNTS[@]} * ${#WORKLOAD_NAMES[@]} * ${#TARGETS[@]} ))
n=0
for ((round = 1; round <= ROUNDS; round++)); do
    # Each round starts one target later (a rotation), so over as many rounds as targets each
    # target runs once in each place: where a target runs in the order moves its context
    # switches and CPU per transaction (benches/syscalls.sh), and reversing the order every
    # other round would keep the middle target in the middle.
    order=()
    for ((k = 0; k < ${#TARGETS[@]}; k++)); do
        order+=("${TARGETS[(k + round - 1) % ${#TARGETS[@]}]}")
    done
    for clients in "${CLIENT_COUNTS[@]}"; do
        for workload in "${WORKLOAD_NAMES[@]}"; do
            for target in "${order[@]}"; do
                [[ " ${NOT_APPLICABLE[*]} " == *" $workload:$target "* ]] && continue
                n=$((n + 1))
                log "[$n/$total] round $round/$ROUNDS, $clients clients: $workload via $target (${DURATION}s)"
                run_one "$round" "$clients" "$workload" "$target"
            done
        done
    done
done

versions=$(for t in "${TARGETS[@]}"; do
    case $t in
        pgbouncer-debian) printf '"%s": "PgBouncer %s",' "$t" "$(pgbouncer_version "$DEBIAN_BIN")" ;;
        pgbouncer-newest) printf '"%s": "PgBouncer %s",' "$t" "$(pgbouncer_version "$NEWEST_BIN")" ;;
        pgdecomp) printf '"%s": "%s (%s, tree %s)",' "$t" "$("$PGDECOMP_BIN" --version 2>/dev/null | head -n1)" \
            "$PGDECOMP_BIN" "$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)" ;;
        baseline) printf '"%s": "%s",' "$t" "$BASELINE_BIN" ;;
    esac
done)
title="pgbench -j 2 (-j 1 for 1 client), ${DURATION}s per run x $ROUNDS rounds, scale $SCALE, interleaved;"
title+=" pools: $POOL server connections per pool, transaction mode; pgdecomp phase 1 (reads outside"
if [ "$READS" = primary ]; then
    title+=" a transaction on the primary: no replica listed), health checks on;"
else
    title+=" a transaction on the replica), health checks on;"
fi
title+=" auth: SCRAM (${AUTH:-verifier}); $(nproc) cores"
na_json=
[ "${#NOT_APPLICABLE[@]}" -eq 0 ] || na_json=$(printf '"%s",' "${NOT_APPLICABLE[@]}")
unknown_tables=false
[ -z "${UNKNOWN_TABLES:-}" ] || unknown_tables=true
wl_json=$(printf '"%s",' "${WORKLOAD_NAMES[@]}")
cat >"$ROOT/meta.json" <<EOF
{"title": "$title", "date": "$(date -Is)", "host": {"nproc": $(nproc), "loadavg": "$(cut -d' ' -f1-3 /proc/loadavg)"},
 "options": {"duration_s": $DURATION, "rounds": $ROUNDS, "clients": [$CLIENTS_LIST], "pool": $POOL, "scale": $SCALE,
             "idle": $IDLE, "auth": "${AUTH:-verifier}", "unknown_tables": $unknown_tables},
 "versions": {${versions%,}}, "postgresql": "$("$PG_BIN/postgres" --version)",
 "workloads": [${wl_json%,}], "not_applicable": [${na_json%,}]}
EOF
touch "$ROOT/runs.jsonl" "$ROOT/idle.jsonl"
"$PYTHON" "$BENCH_DIR/compare.py" report --runs "$ROOT/runs.jsonl" --idle "$ROOT/idle.jsonl" \
    --meta "$ROOT/meta.json" --json "$OUT"
exit 0
