#!/usr/bin/env bash
# What TLS costs: pgbench through two pgdecomp instances in front of one primary, one in
# plaintext on both sides, one with TLS on both sides (client_tls_mode = allow with the client
# using sslmode=require, server_tls_mode = require). Reports the median TPS of -S -M extended and
# of -S -C (a TLS login per transaction), the ratios, and each proxy's CPU per transaction.
# Usage: benches/tls.sh   Env: DURATION (s per run, 10), CLIENTS (32), SCALE (10), ROUNDS (3), KEEP=1,
#                        PGDECOMP_BIN (a binary to measure instead of `cargo build --release`).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-32}
SCALE=${SCALE:-10}
ROUNDS=${ROUNDS:-3}

ensure_packages postgresql-15 postgresql-client-15 openssl
if [ -z "${PGDECOMP_BIN:-}" ]; then
    log "building pgdecomp (release)"
    (cd "$REPO_ROOT" && cargo build --release)
    PGDECOMP_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/pgdecomp
fi

ROOT=$(mktemp -d "${TMPDIR:-/tmp}/pgdecomp-tls-bench.XXXXXX")
P=$(free_port)
PIDS=()

# shellcheck disable=SC2317  # invoked by the traps below
cleanup() {
    trap - INT TERM EXIT
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pg_stop_topology "$ROOT" immediate
    if [ -n "${KEEP:-}" ]; then log "kept $ROOT"; else rm -rf "$ROOT"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pg_build_topology "$ROOT" "$P"
log "pgbench -i -s $SCALE"
PGPASSWORD=gitlab "$PG_BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$P" -U gitlab \
    gitlabhq_production >"$ROOT/pgbench-init.log" 2>&1 || die "pgbench -i failed: $ROOT/pgbench-init.log"

log "certificates; TLS on the primary"
mkdir -p "$ROOT/tls"
(
    cd "$ROOT/tls"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 2 -subj "/CN=bench CA" 2>/dev/null
    openssl req "${ec[@]}" -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
        -days 2 -extfile san.ext 2>/dev/null
)
cp "$ROOT/tls/server.crt" "$ROOT/tls/server.key" "$ROOT/main_primary/"
[ "$(id -u)" -ne 0 ] || chown postgres:postgres "$ROOT/main_primary/server.crt" "$ROOT/main_primary/server.key"
chmod 600 "$ROOT/main_primary/server.key"
pg_psql "$ROOT/main_primary" "$P" postgres -c "alter system set ssl = on" >/dev/null
pg_psql "$ROOT/main_primary" "$P" postgres -c "select pg_reload_conf()" >/dev/null
sleep 1

{ cat "$REPO_ROOT/config/gitlab_schemas.tsv"
  printf 'pgbench_%s\tgitlab_main\n' accounts branches tellers history; } >"$ROOT/schemas.tsv"
printf '"gitlab" "gitlab"\n' >"$ROOT/userlist.txt"

# start_proxy NAME CLIENT_MODE SERVER_MODE
declare -A PORT PID
start_proxy() {
    local name=$1 port metrics
    port=$(free_port) metrics=$(free_port)
    write_pgdecomp_config "$ROOT/$name.toml" "$(phase_file_for 1 "$ROOT")" "127.0.0.1:$port" \
        "127.0.0.1:$metrics" "127.0.0.1:$P" "" "127.0.0.1:$P" "" 8
    sed -i -e "s|^auth_file = .*|auth_file = \"userlist.txt\"|" \
        -e "s|^dictionary = .*|dictionary = \"schemas.tsv\"|" \
        -e "s|^client_tls_mode = .*|client_tls_mode = \"$2\"|" \
        -e "s|^# client_tls_cert_file = .*|client_tls_cert_file = \"tls/server.crt\"|" \
        -e "s|^# client_tls_key_file = .*|client_tls_key_file = \"tls/server.key\"|" \
        -e "s|^server_tls_mode = .*|server_tls_mode = \"$3\"|" "$ROOT/$name.toml"
    grep -q '^\[server\]' "$ROOT/$name.toml" || printf '\n[server]\nuser = "gitlab"\npassword = "gitlab"\n' >>"$ROOT/$name.toml"
    "$PGDECOMP_BIN" run --config "$ROOT/$name.toml" >"$ROOT/$name.log" 2>&1 &
    PIDS+=($!)
    PID[$name]=$!
    wait_for "pgdecomp $name on port $port" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
    PORT[$name]=$port
}
start_proxy plain disable disable
start_proxy tls allow require

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# bench NAME MODE ARGS... -> "tps cpu_us_per_txn"
bench() {
    local name=$1 sslmode=$2 before after out tps
    shift 2
    before=$(cpu_ticks "${PID[$name]}")
    out=$(PGSSLMODE=$sslmode PGPASSWORD=gitlab timeout $((DURATION + 60)) "$PG_BIN/pgbench" \
        -h 127.0.0.1 -p "${PORT[$name]}" -U gitlab -n -c "$CLIENTS" -j 2 -T "$DURATION" "$@" \
        gitlabhq_production 2>&1) || { printf '%s\n' "$out" >>"$ROOT/failures.log"; echo "fail fail"; return; }
    after=$(cpu_ticks "${PID[$name]}")
    tps=$(awk '/^number of transactions actually processed/ { split($6, a, "/"); print a[1] }' <<<"$out")
    awk -v n="$tps" -v t=$((after - before)) -v hz="$TICK" -v d="$DURATION" \
        'BEGIN { printf "%.0f %.1f\n", n / d, (n > 0 ? t / hz * 1e6 / n : 0) }'
}

declare -A RUNS CPU
for ((round = 0; round < ROUNDS; round++)); do
    for workload in extended connect; do
        case $workload in
            extended) args=(-S -M extended) ;;
            connect) args=(-S -C) ;;
        esac
        if [ $((round % 2)) -eq 0 ]; then order=(plain tls); else order=(tls plain); fi
        for name in "${order[@]}"; do
            mode=disable
            [ "$name" = tls ] && mode=require
            log "round $((round + 1))/$ROUNDS: pgbench ${args[*]} via pgdecomp ($name)"
            read -r tps cpu < <(bench "$name" "$mode" "${args[@]}")
            RUNS[$workload.$name]="${RUNS[$workload.$name]:-} $tps"
            CPU[$workload.$name]="${CPU[$workload.$name]:-} $cpu"
        done
    done
done
median() { tr ' ' '\n' <<<"$1" | grep -E '^[0-9.]+$' | sort -n | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "fail") }'; }
printf '\n%s clients, %ss x %s rounds, 8 server connections, one primary\n' "$CLIENTS" "$DURATION" "$ROUNDS"
printf '%-28s %10s %10s %14s %14s %8s\n' workload plain_tps tls_tps plain_us/txn tls_us/txn tls/plain
for workload in extended connect; do
    p=$(median "${RUNS[$workload.plain]}") t=$(median "${RUNS[$workload.tls]}")
    pc=$(median "${CPU[$workload.plain]}") tc=$(median "${CPU[$workload.tls]}")
    label="-S -M extended"
    [ "$workload" = connect ] && label="-S -C (login per txn)"
    awk -v l="$label" -v p="$p" -v t="$t" -v pc="$pc" -v tc="$tc" \
        'BEGIN { printf "%-28s %10s %10s %14s %14s %8.3f\n", l, p, t, pc, tc, (p > 0 ? t / p : 0) }'
done
exit 0
