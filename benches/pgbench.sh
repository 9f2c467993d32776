#!/usr/bin/env bash
# Compares pgbench throughput and latency directly against PostgreSQL, through PgBouncer and
# through pgdecomp (both in transaction mode with 8 server connections), on free local ports.
# Usage: benches/pgbench.sh   Env: DURATION (s per run, default 10), CLIENTS (32), SCALE (10),
# KEEP=1 keeps the temp dir with all logs; UNKNOWN_TABLES=1 leaves pgbench's tables out of the
# dictionary (every statement then records a wrong_schema violation); BASELINE=/path/to/pgdecomp
# runs a second pgdecomp binary (e.g. an earlier commit's) in the same interleaved rounds.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-32}
SCALE=${SCALE:-10}
POOL=8

ensure_packages postgresql-15 postgresql-client-15 pgbouncer
command -v cargo >/dev/null || die "cargo is required"
log "building pgdecomp (release)"
(cd "$REPO_ROOT" && cargo build --release)

ROOT=$(mktemp -d "${TMPDIR:-/tmp}/pgdecomp-bench.XXXXXX")
PRIMARY_PORT=$(free_port)
BOUNCER_PORT=$(free_port)
PROXY_PORT=$(free_port)
METRICS_PORT=$(free_port)
PROXY_PID=
BASE_PID=
BASE_PORT=$(free_port)
BASE_METRICS_PORT=$(free_port)

# shellcheck disable=SC2317  # invoked by the traps below
cleanup() {
    trap - INT TERM EXIT
    for pid in $PROXY_PID $BASE_PID; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -f "$ROOT/pgbouncer.pid" ]; then
        kill "$(cat "$ROOT/pgbouncer.pid")" 2>/dev/null || true
    fi
    pg_stop_topology "$ROOT" immediate
    if [ -n "${KEEP:-}" ]; then
        log "kept $ROOT"
    else
        rm -rf "$ROOT"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pg_build_topology "$ROOT" "$PRIMARY_PORT"
log "pgbench -i -s $SCALE"
PGPASSWORD=gitlab "$PG_BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PRIMARY_PORT" -U gitlab \
    gitlabhq_production >"$ROOT/pgbench-init.log" 2>&1 || die "pgbench -i failed: $ROOT/pgbench-init.log"

# Plaintext in both auth files: each pooler then speaks SCRAM to clients and to the server.
printf '"gitlab" "gitlab"\n"admin" "admin"\n' | as_pg tee "$ROOT/userlist.txt" >/dev/null

as_pg tee "$ROOT/pgbouncer.ini" >/dev/null <<EOF
[databases]
gitlabhq_production = host=127.0.0.1 port=$PRIMARY_PORT dbname=gitlabhq_production

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $ROOT/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 500
max_prepared_statements = 200
logfile = $ROOT/pgbouncer.log
pidfile = $ROOT/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
EOF
# PgBouncer before 1.21 does not know max_prepared_statements (and cannot pool -M prepared).
BOUNCER_PREPARED=yes
if ! pgbouncer --version | awk 'NR == 1 { split($2, v, "."); exit !(v[1] > 1 || v[2] >= 21) }'; then
    as_pg sed -i '/^max_prepared_statements/d' "$ROOT/pgbouncer.ini"
    BOUNCER_PREPARED=no
fi
as_pg pgbouncer -d "$ROOT/pgbouncer.ini" || die "pgbouncer did not start: $ROOT/pgbouncer.log"
wait_for "PgBouncer on port $BOUNCER_PORT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$BOUNCER_PORT"

cp "$ROOT/userlist.txt" "$ROOT/pgdecomp-userlist.txt"
write_pgdecomp_config "$ROOT/pgdecomp.toml" "$(phase_file_for 1 "$ROOT")" \
    "127.0.0.1:$PROXY_PORT" "127.0.0.1:$METRICS_PORT" "127.0.0.1:$PRIMARY_PORT" "" \
    "127.0.0.1:$PRIMARY_PORT" "" "$POOL"
sed -i 's|^auth_file = .*|auth_file = "pgdecomp-userlist.txt"|' "$ROOT/pgdecomp.toml"
# pgbench's tables are not in GitLab's dictionary, so every statement would be an observed
# wrong_schema violation (GitLab counts undefined tables as outside every database). Real GitLab
# traffic never takes that path, so by default they are mapped to gitlab_main and the figures
# measure routing; UNKNOWN_TABLES=1 keeps them undefined to measure the violation path too.
if [ -z "${UNKNOWN_TABLES:-}" ]; then
    { cat "$REPO_ROOT/config/gitlab_schemas.tsv"
      printf 'pgbench_%s\tgitlab_main\n' accounts branches tellers history; } >"$ROOT/schemas.tsv"
    sed -i "s|^dictionary = .*|dictionary = \"$ROOT/schemas.tsv\"|" "$ROOT/pgdecomp.toml"
fi
if ! grep -q '^pool_mode = "transaction"' "$ROOT/pgdecomp.toml"; then
    die "config/pgdecomp.toml no longer defaults to pool_mode = \"transaction\""
fi
"$REPO_ROOT/target/release/pgdecomp" run --config "$ROOT/pgdecomp.toml" >"$ROOT/pgdecomp.log" 2>&1 &
PROXY_PID=$!
wait_for "pgdecomp on port $PROXY_PORT (log: $ROOT/pgdecomp.log)" \
    bash -c "kill -0 $PROXY_PID && exec 3<>/dev/tcp/127.0.0.1/$PROXY_PORT"

TARGETS=(direct pgbouncer pgdecomp)
if [ -n "${BASELINE:-}" ]; then
    # Keys newer than the baseline binary are dropped (its config refuses unknown keys).
    sed -e "s|127.0.0.1:$PROXY_PORT|127.0.0.1:$BASE_PORT|" -e "s|127.0.0.1:$METRICS_PORT|127.0.0.1:$BASE_METRICS_PORT|" \
        -e '/^max_prepared_statements/d' -e '/^max_client_prepared_statements/d' -e '/^client_buffer_bytes/d' \
        "$ROOT/pgdecomp.toml" >"$ROOT/baseline.toml"
    "$BASELINE" run --config "$ROOT/baseline.toml" >"$ROOT/baseline.log" 2>&1 &
    BASE_PID=$!
    wait_for "baseline pgdecomp on port $BASE_PORT (log: $ROOT/baseline.log)" \
        bash -c "kill -0 $BASE_PID && exec 3<>/dev/tcp/127.0.0.1/$BASE_PORT"
    TARGETS+=(baseline)
fi

WORKLOADS=("select-simple:-S -M simple" "select-extended:-S -M extended"
    "select-prepared:-S -M prepared" "tpcb:")
declare -A TPS LAT
i=0
for workload in "${WORKLOADS[@]}"; do
    name=${workload%%:*}
    read -r -a args <<<"${workload#*:}"
    # Alternate the order so warm caches and background noise don't favour one target.
    order=("${TARGETS[@]}")
    if [ $((i % 2)) -eq 1 ]; then
        order=(); for ((k = ${#TARGETS[@]} - 1; k >= 0; k--)); do order+=("${TARGETS[k]}"); done
    fi
    for target in "${order[@]}"; do
        case $target in
            direct) port=$PRIMARY_PORT ;;
            pgbouncer) port=$BOUNCER_PORT ;;
            pgdecomp) port=$PROXY_PORT ;;
            baseline) port=$BASE_PORT ;;
        esac
        if [ "$target" = pgbouncer ] && [ "$name" = select-prepared ] && [ "$BOUNCER_PREPARED" = no ]; then
            TPS[$name,$target]=n/a LAT[$name,$target]=n/a
            continue
        fi
        log "$name via $target (${DURATION}s, $CLIENTS clients)"
        read -r tps lat < <(run_pgbench "$ROOT" "$port" "${args[@]}")
        TPS[$name,$target]=$tps LAT[$name,$target]=$lat
    done
    i=$((i + 1))
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "-" }'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%+.3f", a - b; else printf "-" }'; }

printf '\npgbench: %s clients, -j 2, %ss per run, scale %s; pools: %s server connections, transaction mode\n' \
    "$CLIENTS" "$DURATION" "$SCALE" "$POOL"
printf '%-16s %10s %10s %10s | %8s %8s %8s | %8s %8s | %10s\n' workload "direct" "pgbouncer" "pgdecomp" \
    "lat dir" "lat pgb" "lat pgd" "pgd/pgb" "pgd/dir" "added ms"
printf '%-16s %10s %10s %10s | %8s %8s %8s | %8s %8s | %10s\n' "" tps tps tps ms ms ms tps tps "vs direct"
for workload in "${WORKLOADS[@]}"; do
    name=${workload%%:*}
    printf '%-16s %10s %10s %10s | %8s %8s %8s | %8s %8s | %10s\n' "$name" \
        "${TPS[$name,direct]}" "${TPS[$name,pgbouncer]}" "${TPS[$name,pgdecomp]}" \
        "${LAT[$name,direct]}" "${LAT[$name,pgbouncer]}" "${LAT[$name,pgdecomp]}" \
        "$(ratio "${TPS[$name,pgdecomp]}" "${TPS[$name,pgbouncer]}")" \
        "$(ratio "${TPS[$name,pgdecomp]}" "${TPS[$name,direct]}")" \
        "$(added "${LAT[$name,pgdecomp]}" "${LAT[$name,direct]}")"
done
if [ -n "${BASELINE:-}" ]; then
    printf '\n%-16s %10s %10s | %12s\n' workload "baseline" "pgdecomp" "pgd/baseline"
    for workload in "${WORKLOADS[@]}"; do
        name=${workload%%:*}
        printf '%-16s %10s %10s | %12s\n' "$name" "${TPS[$name,baseline]}" "${TPS[$name,pgdecomp]}" \
            "$(ratio "${TPS[$name,pgdecomp]}" "${TPS[$name,baseline]}")"
    done
fi
[ -f "$ROOT/pgbench-failures.log" ] && log "some runs failed; output kept in the log (KEEP=1 to keep $ROOT)"
exit 0
