#!/usr/bin/env bash
# System calls per transaction, side by side: pgbench runs through PgBouncer and pgdecomp in
# turn while `perf stat` counts the proxy's socket reads and writes, event-loop waits and memory
# calls per transaction, with its context switches: voluntary (~voluntary, it waited) and
# preemptions (~involuntary, a woken process took its core). Kernel time per transaction
# (benches/compare.sh) follows from these.
#
# Usage: benches/syscalls.sh [options]
#   --workloads LIST    comma list of simple,extended,prepared,tpcb,connect,mix (simple,tpcb)
#   --clients N         pgbench clients (32; the pool has 8 connections)
#   --transactions N    transactions per client (2000; TPC-B runs a fifth of them)
#   --pgdecomp PATH     the pgdecomp binary (default: scripts/build-release, with PGO)
#   --baseline PATH     another pgdecomp binary, counted beside it
#   --pgbouncer PATH    a PgBouncer binary (default: the newest in $BENCH_CACHE, else Debian's)
# Both proxies read from the primary (pgdecomp lists no replica), as compare.sh --reads primary.
# Env: KEEP=1 keeps the temporary directory (perf's counts, pgbench's logs).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$BENCH_DIR/../scripts/lib.sh"
# shellcheck source=benches/lib/compare-setup.sh
source "$BENCH_DIR/lib/compare-setup.sh"

WORKLOADS=simple,tpcb CLIENTS=32 TXNS=2000 PGDECOMP_BIN='' BASELINE_BIN='' BOUNCER_BIN=''
while [ $# -gt 0 ]; do
    case $1 in
        --workloads) WORKLOADS=$2; shift 2 ;;
        --clients) CLIENTS=$2; shift 2 ;;
        --transactions) TXNS=$2; shift 2 ;;
        --pgdecomp) PGDECOMP_BIN=$2; shift 2 ;;
        --baseline) BASELINE_BIN=$2; shift 2 ;;
        --pgbouncer) BOUNCER_BIN=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
IFS=, read -r -a WORKLOAD_NAMES <<<"$WORKLOADS"
for w in "${WORKLOAD_NAMES[@]}"; do
    case $w in simple|extended|prepared|tpcb|connect|mix) ;; *) die "unknown workload: $w" ;; esac
done

ensure_packages postgresql-15 postgresql-client-15 pgbouncer linux-perf
command -v perf >/dev/null || die "perf is required (Debian's linux-perf)"
perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1 \
    || die "perf cannot read syscall tracepoints here (tracefs mounted? perf_event_paranoid?)"
[ -n "$BOUNCER_BIN" ] || BOUNCER_BIN=$(newest_cached_pgbouncer)
[ -n "$BOUNCER_BIN" ] || BOUNCER_BIN=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
[ -n "$PGDECOMP_BIN" ] || PGDECOMP_BIN=$(build_pgdecomp)
[ -x "$PGDECOMP_BIN" ] || die "no pgdecomp binary at $PGDECOMP_BIN"

ROOT=$(mktemp -d "${TMPDIR:-/tmp}/pgdecomp-syscalls.XXXXXX")
chmod 755 "$ROOT"
P=$(free_port) R=$(free_port)
declare -A PORT PID
TARGETS=(pgbouncer pgdecomp)
[ -n "$BASELINE_BIN" ] && TARGETS+=(baseline)

trap bench_cleanup EXIT
trap 'exit 130' INT

bench_pg_pair "$ROOT" "$P" "$R" 200
bench_seed "$ROOT" "$P" "$R" 10
bench_userlist "$ROOT" "$P"
for t in "${TARGETS[@]}"; do
    PORT[$t]=$(free_port)
    case $t in
        pgbouncer)
            bench_start_pgbouncer pgbouncer "$BOUNCER_BIN" "${PORT[$t]}" "$P" 8 1000
            PID[$t]=$BOUNCER_PID
            ;;
        *)
            bin=$PGDECOMP_BIN
            [ "$t" = baseline ] && bin=$BASELINE_BIN
            bench_start_pgdecomp "$t" "$bin" "${PORT[$t]}" "$P" "" 8 1000
            PID[$t]=$PGDECOMP_PID
            ;;
    esac
done

# The calls a proxy's event loop can make per transaction (a few events, so perf attaches at
# once and its window matches the transaction counts around it).
EVENTS=$(printf 'syscalls:sys_enter_%s,' read write readv writev recvfrom sendto recvmsg sendmsg \
    epoll_wait epoll_pwait epoll_ctl poll ppoll futex sched_yield getrandom brk mmap munmap \
    madvise mprotect clock_gettime)
EVENTS+=page-faults,context-switches,cpu-migrations

# count TARGET WORKLOAD: pgbench through the target under perf stat; prints "name count" per
# syscall made, then "txns N". The clients' logins are counted too: 40 or so calls each, under
# 0.1 % of a run.
count() {
    local t=$1 w=$2 args out=$ROOT/$1-$2 txns=$TXNS
    mapfile -t args < <(workload_args "$w")
    [ "$w" = tpcb ] && txns=$((TXNS / 5))
    local before
    before=$(switches "${PID[$t]}")
    PGPASSWORD=gitlab perf stat -x, -e "$EVENTS" -p "${PID[$t]}" -o "$out.perf" -- \
        "$PG_BIN/pgbench" -n "${args[@]}" -c "$CLIENTS" -j 2 -t "$txns" -h 127.0.0.1 \
        -p "${PORT[$t]}" -U gitlab gitlabhq_production >"$out.pgbench" 2>&1 \
        || die "pgbench $w through $t failed: $out.pgbench"
    grep -q "processed: $((txns * CLIENTS))/" "$out.pgbench" \
        || die "pgbench $w through $t lost transactions: $out.pgbench"
    awk -F, '$1 ~ /^[0-9]+$/ && $1 > 0 { sub(/^syscalls:sys_enter_/, "", $3); print $3, $1 }' "$out.perf"
    switches "${PID[$t]}" | paste - <(printf '%s\n' "$before") \
        | awk '{ printf "~%s %d\n", $1, $2 - $4 }'
    echo "txns $((txns * CLIENTS))"
}

# switches PID: the context switches of every thread of PID so far, "voluntary N" (it waited)
# and "involuntary N" (it was preempted), one per line.
switches() {
    cat /proc/"$1"/task/*/status | awk '
        /^voluntary_ctxt_switches/ { v += $2 }
        /^nonvoluntary_ctxt_switches/ { n += $2 }
        END { printf "voluntary %d\ninvoluntary %d\n", v, n }'
}

for w in "${WORKLOAD_NAMES[@]}"; do
    declare -A N=()
    for t in "${TARGETS[@]}"; do
        log "$w through $t"
        while read -r name n; do N[$t,$name]=$n; done < <(count "$t" "$w")
    done
    printf '\nsyscalls per transaction, %s, %s clients\n' "$w" "$CLIENTS"
    printf '%-22s' syscall
    for t in "${TARGETS[@]}"; do printf '%11s' "$t"; done
    printf '\n'
    names=$(for k in "${!N[@]}"; do echo "${k#*,}"; done | grep -v '^txns$' | sort -u)
    for name in $names total; do
        label=$name
        [ "$name" = total ] && label="syscalls in all"
        printf '%-22s' "$label"
        for t in "${TARGETS[@]}"; do
            if [ "$name" = total ]; then
                sum=0
                for k in "${!N[@]}"; do
                    # Only the system calls: not the context switches and faults.
                    case $k in "$t,txns" | "$t,~"* | "$t,"*-*) ;; "$t,"*) sum=$((sum + N[$k])) ;; esac
                done
            else
                sum=${N[$t,$name]:-0}
            fi
            printf '%11s' "$(awk -v a="$sum" -v b="${N[$t,txns]}" 'BEGIN { printf "%.2f", a / b }')"
        done
        printf '\n'
    done
done
