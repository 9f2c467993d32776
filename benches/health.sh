#!/usr/bin/env bash
# What health checking and read-your-writes tracking cost: pgbench -S through two pgdecomp
# instances in front of the same main primary + replica, one with [health] interval = 0 and
# read_your_writes = false, one with checks every INTERVAL s and read-your-writes on. Runs
# alternate between the two, ROUNDS times; the table reports the median TPS and the ratio.
# Usage: benches/health.sh   Env: DURATION (s per run, 10), CLIENTS (32), SCALE (10),
# ROUNDS (3), INTERVAL (0.5: four times the default rate, to make the cost visible), KEEP=1.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-32}
SCALE=${SCALE:-10}
ROUNDS=${ROUNDS:-3}
INTERVAL=${INTERVAL:-0.5}

ensure_packages postgresql-15 postgresql-client-15
log "building pgdecomp (release)"
(cd "$REPO_ROOT" && cargo build --release)

ROOT=$(mktemp -d "${TMPDIR:-/tmp}/pgdecomp-health-bench.XXXXXX")
P=$(free_port) R=$(free_port) C=$(free_port) CR=$(free_port)
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

pg_build_topology "$ROOT" "$P" "$R" "$C" "$CR"
log "pgbench -i -s $SCALE"
PGPASSWORD=gitlab "$PG_BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$P" -U gitlab \
    gitlabhq_production >"$ROOT/pgbench-init.log" 2>&1 || die "pgbench -i failed: $ROOT/pgbench-init.log"
pg_wait_replay "$ROOT/main_primary" "$P" "$ROOT/main_replica" "$R"
{ cat "$REPO_ROOT/config/gitlab_schemas.tsv"
  printf 'pgbench_%s\tgitlab_main\n' accounts branches tellers history; } >"$ROOT/schemas.tsv"
printf '"gitlab" "gitlab"\n' >"$ROOT/userlist.txt"

# start_proxy NAME INTERVAL RYW -> port; phase 1 sends -S reads to the main replica.
declare -A PORT
start_proxy() {
    local name=$1 port metrics
    port=$(free_port) metrics=$(free_port)
    write_pgdecomp_config "$ROOT/$name.toml" "$(phase_file_for 1 "$ROOT")" "127.0.0.1:$port" \
        "127.0.0.1:$metrics" "127.0.0.1:$P" "\"127.0.0.1:$R\"" "127.0.0.1:$C" "\"127.0.0.1:$CR\"" 8
    sed -i -e "s|^auth_file = .*|auth_file = \"userlist.txt\"|" \
        -e "s|^dictionary = .*|dictionary = \"$ROOT/schemas.tsv\"|" \
        -e "/^\[health\]/,/^\[/ s|^interval = .*|interval = $2|" \
        -e "/^\[health\]/,/^\[/ s|^read_your_writes = .*|read_your_writes = $3|" "$ROOT/$name.toml"
    grep -q '^\[server\]' "$ROOT/$name.toml" || printf '\n[server]\nuser = "gitlab"\npassword = "gitlab"\n' >>"$ROOT/$name.toml"
    "$REPO_ROOT/target/release/pgdecomp" run --config "$ROOT/$name.toml" >"$ROOT/$name.log" 2>&1 &
    PIDS+=($!)
    wait_for "pgdecomp $name on port $port" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
    PORT[$name]=$port
}
start_proxy off 0 false
start_proxy on "$INTERVAL" true

declare -A RUNS
for ((round = 0; round < ROUNDS; round++)); do
    if [ $((round % 2)) -eq 0 ]; then order=(off on); else order=(on off); fi
    for name in "${order[@]}"; do
        log "round $((round + 1))/$ROUNDS: pgbench -S -M extended via pgdecomp with checks $name"
        read -r tps _ < <(run_pgbench "$ROOT" "${PORT[$name]}" -S -M extended)
        RUNS[$name]="${RUNS[$name]:-} $tps"
    done
done
median() { tr ' ' '\n' <<<"$1" | grep -E '^[0-9]+$' | sort -n | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "fail") }'; }
off=$(median "${RUNS[off]}") on=$(median "${RUNS[on]}")
printf '\npgbench -S -M extended, %s clients, %ss x %s rounds, 8 server connections; reads on the main replica\n' \
    "$CLIENTS" "$DURATION" "$ROUNDS"
printf '%-34s %10s   runs:%s\n' "checks off, read_your_writes off" "$off" "${RUNS[off]}"
printf '%-34s %10s   runs:%s\n' "checks every ${INTERVAL}s, read_your_writes on" "$on" "${RUNS[on]}"
awk -v a="$on" -v b="$off" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "on/off TPS ratio: %.3f (cost %.1f%%)\n", a / b, 100 * (1 - a / b) }'
exit 0
