#!/usr/bin/env bash
# Instructions per transaction, side by side: each proxy runs under valgrind's callgrind, which
# counts the user-space instructions it executes (its own code, the runtime, libc) while pgbench
# runs a fixed number of transactions through it. Unlike CPU time on this shared 2-core
# machine, the count does not move with what the servers and pgbench evict from the caches, so
# a change of a few hundred instructions per transaction shows up in one run. Kernel time
# (the socket calls) is not counted: see benches/compare.sh for CPU per transaction.
#
# Usage: benches/instructions.sh [options]
#   --workloads LIST    comma list of simple,extended,prepared,tpcb,connect,mix
#                       (simple,extended,prepared,tpcb; connect logs in once per transaction)
#   --transactions N    transactions per client, counted after a warm-up (2000)
#   --clients N         pgbench clients (4; the pool has 8 connections, so none waits)
#   --pgdecomp PATH     the pgdecomp binary (default: scripts/build-release, with PGO)
#   --baseline PATH     another pgdecomp binary (e.g. an earlier commit's), counted beside it
#   --pgbouncer PATH    a PgBouncer binary (default: the newest in $BENCH_CACHE, else Debian's)
#   --cache             also simulate this CPU's caches (L1i 64 KiB, L1d 48 KiB, L2 2 MiB per
#                       core) and print misses per transaction: a hot path larger than L1i
#                       costs cycles the instruction count does not show. The proxy is alone
#                       in the simulated caches; the real ones are shared with pgbench and
#                       the servers, so real misses are higher. About twice as slow.
#   --keep              keep the temporary directory (callgrind's files, for callgrind_annotate)
# Both proxies read from the primary (pgdecomp lists no replica), as compare.sh --reads primary.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$BENCH_DIR/../scripts/lib.sh"
# shellcheck source=benches/lib/compare-setup.sh
source "$BENCH_DIR/lib/compare-setup.sh"

WORKLOADS=simple,extended,prepared,tpcb TXNS=2000 CLIENTS=4 PGDECOMP_BIN='' BASELINE_BIN=''
BOUNCER_BIN='' KEEP=${KEEP:-} CACHE=''
while [ $# -gt 0 ]; do
    case $1 in
        --workloads) WORKLOADS=$2; shift 2 ;;
        --transactions) TXNS=$2; shift 2 ;;
        --clients) CLIENTS=$2; shift 2 ;;
        --pgdecomp) PGDECOMP_BIN=$2; shift 2 ;;
        --baseline) BASELINE_BIN=$2; shift 2 ;;
        --pgbouncer) BOUNCER_BIN=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --cache) CACHE=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
IFS=, read -r -a WORKLOAD_NAMES <<<"$WORKLOADS"
for w in "${WORKLOAD_NAMES[@]}"; do
    case $w in simple|extended|prepared|tpcb|connect|mix) ;; *) die "unknown workload: $w" ;; esac
done

ensure_packages postgresql-15 postgresql-client-15 pgbouncer valgrind
[ -n "$BOUNCER_BIN" ] || BOUNCER_BIN=$(newest_cached_pgbouncer)
[ -n "$BOUNCER_BIN" ] || BOUNCER_BIN=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
[ -n "$PGDECOMP_BIN" ] || PGDECOMP_BIN=$(build_pgdecomp)
[ -x "$PGDECOMP_BIN" ] || die "no pgdecomp binary at $PGDECOMP_BIN"

ROOT=$(mktemp -d "${TMPDIR:-/tmp}/pgdecomp-instructions.XXXXXX")
chmod 755 "$ROOT"
P=$(free_port) R=$(free_port)
declare -A PORT PID OWNER
TARGETS=(pgbouncer pgdecomp)
[ -n "$BASELINE_BIN" ] && TARGETS+=(baseline)

trap bench_cleanup EXIT
trap 'exit 130' INT

bench_pg_pair "$ROOT" "$P" "$R" 200
bench_seed "$ROOT" "$P" "$R" 1
bench_userlist "$ROOT" "$P"

# under_callgrind NAME BIN: a script that runs BIN under callgrind, counting nothing until
# told to (logins and the warm-up are not counted); prints its path.
under_callgrind() {
    local wrapper=$ROOT/$1/callgrind.sh sim=''
    mkdir -p "$ROOT/$1"
    [ -z "$CACHE" ] || sim='--cache-sim=yes --I1=65536,16,64 --D1=49152,12,64 --LL=2097152,16,64'
    printf '#!/bin/sh\nexec valgrind --tool=callgrind %s --instr-atstart=no --callgrind-out-file=%s %s "$@"\n' \
        "$sim" "$ROOT/$1/callgrind.out.%p" "$2" >"$wrapper"
    chmod 755 "$wrapper"
    chown -R postgres "$ROOT/$1"
    printf '%s\n' "$wrapper"
}

# valgrind_pid NAME: the process valgrind runs, from the first line of its log.
valgrind_pid() {
    local i pid=''
    for ((i = 0; i < 100; i++)); do
        pid=$(sed -n '1s/^==\([0-9]*\)==.*/\1/p' "$ROOT/$1/valgrind.log" 2>/dev/null)
        [ -n "$pid" ] && break
        sleep 0.1
    done
    [ -n "$pid" ] || die "$1 did not start under valgrind: $ROOT/$1/valgrind.log"
    printf '%s\n' "$pid"
}

for t in "${TARGETS[@]}"; do
    PORT[$t]=$(free_port)
    case $t in
        pgbouncer)
            # bench_start_pgbouncer writes the ini and starts a daemon; run it again in the
            # foreground under valgrind, as the same user (callgrind_control must be that user).
            bench_start_pgbouncer pgbouncer "$BOUNCER_BIN" "${PORT[$t]}" "$P" 8 200
            kill "$BOUNCER_PID"
            wait_for "PgBouncer to stop" bash -c "! kill -0 $BOUNCER_PID 2>/dev/null"
            wrapper=$(under_callgrind "$t" "$BOUNCER_BIN")
            as_pg "$wrapper" "$ROOT/pgbouncer/pgbouncer.ini" >"$ROOT/$t/valgrind.log" 2>&1 &
            OWNER[$t]=postgres
            ;;
        *)
            bin=$PGDECOMP_BIN
            [ "$t" = baseline ] && bin=$BASELINE_BIN
            wrapper=$(under_callgrind "$t" "$bin")
            bench_start_pgdecomp "$t" "$wrapper" "${PORT[$t]}" "$P" "" 8 200
            mv "$ROOT/$t.log" "$ROOT/$t/valgrind.log"
            OWNER[$t]=root
            ;;
    esac
    PID[$t]=$(valgrind_pid "$t")
    wait_for "$t on port ${PORT[$t]} under valgrind" bash -c "exec 3<>/dev/tcp/127.0.0.1/${PORT[$t]}"
done

# control TARGET ARGS...: callgrind_control as the user the target runs as.
control() {
    local t=$1
    shift
    if [ "${OWNER[$t]}" = postgres ]; then
        as_pg callgrind_control "$@" >/dev/null 2>&1
    else
        callgrind_control "$@" >/dev/null 2>&1
    fi
}

# run_pgbench TARGET WORKLOAD TXNS: pgbench through the target; fails unless every
# transaction was processed.
run_pgbench() {
    local args
    mapfile -t args < <(workload_args "$2")
    PGPASSWORD=gitlab "$PG_BIN/pgbench" -n "${args[@]}" -c "$CLIENTS" -j 1 -t "$3" -h 127.0.0.1 \
        -p "${PORT[$1]}" -U gitlab gitlabhq_production >"$ROOT/$1/pgbench-$2.log" 2>&1 \
        || die "pgbench $2 through $1 failed: $ROOT/$1/pgbench-$2.log"
    grep -q "processed: $(($3 * CLIENTS))/" "$ROOT/$1/pgbench-$2.log" \
        || die "pgbench $2 through $1 lost transactions: $ROOT/$1/pgbench-$2.log"
}

declare -A IR MISSES
for w in "${WORKLOAD_NAMES[@]}"; do
    for t in "${TARGETS[@]}"; do
        log "$w through $t"
        run_pgbench "$t" "$w" 100
        control "$t" -z "${PID[$t]}"
        control "$t" -i on "${PID[$t]}"
        run_pgbench "$t" "$w" "$TXNS"
        control "$t" -i off "${PID[$t]}"
        control "$t" -d "$w" "${PID[$t]}"
        # callgrind numbers its dumps; each is renamed below, so this one is the only numbered file.
        file=$(find "$ROOT/$t" -name 'callgrind.out.*.*' | head -n1)
        [ -n "$file" ] || die "callgrind wrote no dump for $t: $ROOT/$t/valgrind.log"
        IR[$t,$w]=$(awk '/^totals:/ { print $2; exit }' "$file")
        # With --cache: "I1 D1 L2" misses (reads and writes) from the totals, by event name.
        MISSES[$t,$w]=$(awk '/^events:/ { for (i = 2; i <= NF; i++) col[$i] = i }
            /^totals:/ && col["I1mr"] { print $col["I1mr"], $col["D1mr"] + $col["D1mw"],
                $col["ILmr"] + $col["DLmr"] + $col["DLmw"]; exit }' "$file")
        mv "$file" "$ROOT/$t/callgrind.$w"
    done
done

printf '\nuser-space instructions per transaction (%s clients, %s transactions each)\n' "$CLIENTS" "$TXNS"
header="workload   pgbouncer   pgdecomp  pgd/pgb"
[ -n "$BASELINE_BIN" ] && header+="   baseline  pgd/base"
printf '%s\n' "$header"
per_txn() { echo $(( ${IR[$1,$2]} / (TXNS * CLIENTS) )); }
for w in "${WORKLOAD_NAMES[@]}"; do
    b=$(per_txn pgbouncer "$w") d=$(per_txn pgdecomp "$w")
    line=$(printf '%-9s %10s %10s %8s' "$w" "$b" "$d" "$(awk -v a="$d" -v b="$b" 'BEGIN { printf "%.2f", a / b }')")
    if [ -n "$BASELINE_BIN" ]; then
        x=$(per_txn baseline "$w")
        line+=$(printf ' %10s %9s' "$x" "$(awk -v a="$d" -v b="$x" 'BEGIN { printf "%.3f", a / b }')")
    fi
    printf '%s\n' "$line"
done
if [ -n "$CACHE" ]; then
    printf '\ncache misses per transaction (callgrind: L1i 64 KiB, L1d 48 KiB, L2 2 MiB)\n'
    printf '%-9s %-10s %9s %9s %9s\n' workload target L1i L1d L2
    for w in "${WORKLOAD_NAMES[@]}"; do
        for t in "${TARGETS[@]}"; do
            read -r i1 d1 l2 <<<"${MISSES[$t,$w]}"
            awk -v w="$w" -v t="$t" -v i="$i1" -v d="$d1" -v l="$l2" -v n=$((TXNS * CLIENTS)) \
                'BEGIN { printf "%-9s %-10s %9.1f %9.1f %9.2f\n", w, t, i / n, d / n, l / n }'
        done
    done
fi
[ -z "$KEEP" ] || log "callgrind's files: $ROOT/<target>/callgrind.<workload> (callgrind_annotate FILE)"
