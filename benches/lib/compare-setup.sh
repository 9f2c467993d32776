# shellcheck shell=bash disable=SC2034,SC2153  # sets BOUNCER_PID/PGDECOMP_PID for, and reads ROOT and BENCH_DIR from, the bench scripts
# Setup for benches/compare.sh, instructions.sh and syscalls.sh: a main primary with a streaming
# replica, PgBouncer instances and pgdecomp, each on free loopback ports under $ROOT, and what
# both scripts pick and run (the binaries, the workloads). Sourced after scripts/lib.sh; uses
# its pg_* helpers and sets nothing outside the variables named below.

# bench_pg_pair ROOT PRIMARY_PORT REPLICA_PORT MAX_CONNECTIONS
# pg_init_primary's steps (the fixtures' config, roles and GitLab tables) with max_connections
# raised in postgresql.auto.conf before the first start: the fixture's postgresql.conf line
# would otherwise win, and the base backup carries the file to the replica (a hot standby refuses
# to start with fewer connections than its primary). No restart, so no window in which another
# process can take the port.
bench_pg_pair() {
    local root=$1 p=$2 r=$3 max=$4 data=$1/main_primary
    pg_prepare_root "$root"
    log "main primary on 127.0.0.1:$p (max_connections = $max)"
    as_pg "$PG_BIN/initdb" -D "$data" -U postgres -A trust --no-sync -E UTF8 --locale C >/dev/null
    as_pg tee "$data/pg_hba.conf" <"$FIXTURES/pg_hba.conf" >/dev/null
    pg_conf "$data" "$p"
    printf 'max_connections = %s\n' "$max" | as_pg tee -a "$data/postgresql.auto.conf" >/dev/null
    pg_start "$data"
    pg_psql "$data" "$p" postgres -q -f "$FIXTURES/roles.sql" >/dev/null
    pg_psql "$data" "$p" gitlabhq_production -q -f "$FIXTURES/gitlab.sql" >/dev/null
    log "main replica on 127.0.0.1:$r"
    pg_init_replica "$data" "$p" "$root/main_replica" "$r"
}

# bench_seed ROOT PRIMARY_PORT REPLICA_PORT SCALE: pgbench's tables, the mix's rows, replayed.
bench_seed() {
    local root=$1 p=$2 r=$3 scale=$4
    log "pgbench -i -s $scale; rows for the GitLab-like mix"
    PGPASSWORD=gitlab "$PG_BIN/pgbench" -i -q -s "$scale" -h 127.0.0.1 -p "$p" -U gitlab \
        gitlabhq_production >"$root/pgbench-init.log" 2>&1 || die "pgbench -i failed: $root/pgbench-init.log"
    pg_psql "$root/main_primary" "$p" gitlabhq_production -q -f "$BENCH_DIR/gitlab-mix/seed.sql" \
        >"$root/seed.log" 2>&1 || die "seeding the mix tables failed: $root/seed.log"
    pg_wait_replay "$root/main_primary" "$p" "$root/main_replica" "$r"
}

# bench_userlist ROOT PRIMARY_PORT: one auth file for both proxies. AUTH=verifier (the default)
# stores the server's SCRAM verifier, so neither proxy runs PBKDF2 per login and PgBouncer logs
# in to the server with SCRAM passthrough; AUTH=plain stores the plaintext password.
bench_userlist() {
    local secret=gitlab
    [ "${AUTH:-verifier}" = plain ] || secret=$(pg_scram_verifier "$1/main_primary" "$2" gitlab)
    printf '"gitlab" "%s"\n' "$secret" | as_pg tee "$1/userlist.txt" >/dev/null
}

# newest_cached_pgbouncer -> the highest version among the cached PgBouncer builds
# ($BENCH_CACHE/pgbouncer-*/bin/pgbouncer, BENCH_CACHE defaulting to /work/cache, and
# target/pgbouncer-*), or nothing.
newest_cached_pgbouncer() {
    local bin newest=''
    for bin in "${BENCH_CACHE:-/work/cache}"/pgbouncer-*/bin/pgbouncer "$REPO_ROOT"/target/pgbouncer-*/bin/pgbouncer; do
        [ -x "$bin" ] || continue
        if [ -z "$newest" ] || version_ge "$(pgbouncer_version "$bin")" "$(pgbouncer_version "$newest")"; then
            newest=$bin
        fi
    done
    printf '%s\n' "$newest"
}

# build_pgdecomp -> builds pgdecomp as a deployment should (scripts/build-release: profile-guided,
# honouring CARGO_TARGET_DIR) and prints its path.
build_pgdecomp() {
    command -v cargo >/dev/null || die "cargo is required (or pass --pgdecomp PATH)"
    "$REPO_ROOT/scripts/build-release" || die "scripts/build-release failed"
}

# workload_args NAME -> the pgbench arguments of a workload, one per line.
workload_args() {
    case $1 in
        simple) printf '%s\n' -S -M simple ;;
        extended) printf '%s\n' -S -M extended ;;
        prepared) printf '%s\n' -S -M prepared ;;
        tpcb) printf '%s\n' -M simple ;;
        connect) printf '%s\n' -S -C ;;
        mix) printf '%s\n' -M extended -f "$BENCH_DIR/gitlab-mix/main-read.sql@5" \
            -f "$BENCH_DIR/gitlab-mix/ci-read.sql@3" -f "$BENCH_DIR/gitlab-mix/ci-write.sql@1" \
            -f "$BENCH_DIR/gitlab-mix/main-write.sql@1" ;;
    esac
}

# pgbouncer_version BIN -> "1.25.2"
pgbouncer_version() { "$1" --version 2>/dev/null | awk 'NR == 1 { print $2 }'; }

# version_ge A B: A >= B for dotted versions.
version_ge() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$2" ]; }

# bench_start_pgbouncer NAME BIN PORT PRIMARY_PORT POOL MAX_CLIENTS -> sets BOUNCER_PID
# Transaction mode, max_prepared_statements = 200 when the version has it (1.21+), SCRAM towards
# clients, and no per-connection log lines (pgdecomp logs none either).
bench_start_pgbouncer() {
    local name=$1 bin=$2 port=$3 primary=$4 pool=$5 max_clients=$6 dir=$ROOT/$1 i
    as_pg mkdir -p "$dir"
    as_pg tee "$dir/pgbouncer.ini" >/dev/null <<EOF
[databases]
gitlabhq_production = host=127.0.0.1 port=$primary dbname=gitlabhq_production

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $ROOT/userlist.txt
pool_mode = transaction
default_pool_size = $pool
max_client_conn = $max_clients
max_prepared_statements = 200
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
    version_ge "$(pgbouncer_version "$bin")" 1.21 || as_pg sed -i '/^max_prepared_statements/d' "$dir/pgbouncer.ini"
    # runuser's PAM session resets the soft open-file limit to 1024; raise it to the hard limit.
    # shellcheck disable=SC2016  # expanded by the inner shell
    as_pg bash -c 'ulimit -n "$(ulimit -Hn)" && exec "$@"' - "$bin" -d "$dir/pgbouncer.ini" \
        || die "$name did not start: $dir/pgbouncer.log"
    for ((i = 0; i < 50; i++)); do [ -s "$dir/pgbouncer.pid" ] && break; sleep 0.1; done
    BOUNCER_PID=$(cat "$dir/pgbouncer.pid")
    wait_for "$name on port $port" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
}

# bench_start_pgdecomp NAME BIN PORT PRIMARY_PORT REPLICA_PORT POOL MAX_CLIENTS -> sets PGDECOMP_PID
# (REPLICA_PORT empty: no replica)
# Phase 1 (reads outside a transaction go to the replica) or $BENCH_PHASE, health checks on (the
# example's interval), the pool size per target, pgbench's tables mapped to gitlab_main unless
# UNKNOWN_TABLES=1 (then every pgbench statement is an observed wrong_schema violation).
bench_start_pgdecomp() {
    local name=$1 bin=$2 port=$3 p=$4 r=$5 pool=$6 max_clients=$7 conf=$ROOT/$1.toml metrics
    local replicas=
    # No replica port: pgdecomp knows only the primary, and reads fall back to it.
    [ -z "$r" ] || replicas="\"127.0.0.1:$r\""
    metrics=$(free_port)
    write_pgdecomp_config "$conf" "$(phase_file_for "${BENCH_PHASE:-1}" "$ROOT")" "127.0.0.1:$port" "127.0.0.1:$metrics" \
        "127.0.0.1:$p" "$replicas" "127.0.0.1:$p" "$replicas" "$pool"
    if [ ! -f "$ROOT/schemas.tsv" ]; then
        cat "$REPO_ROOT/config/gitlab_schemas.tsv" >"$ROOT/schemas.tsv"
        [ -n "${UNKNOWN_TABLES:-}" ] \
            || printf 'pgbench_%s\tgitlab_main\n' accounts branches tellers history >>"$ROOT/schemas.tsv"
    fi
    sed -i -e "s|^auth_file = .*|auth_file = \"$ROOT/userlist.txt\"|" \
        -e "s|^dictionary = .*|dictionary = \"$ROOT/schemas.tsv\"|" \
        -e "/^\[pool\]/,/^\[/ s|^max_client_conn = .*|max_client_conn = $max_clients|" "$conf"
    grep -q '^pool_mode = "transaction"' "$conf" || die "config/pgdecomp.toml no longer defaults to transaction mode"
    grep -Eq '^interval = [1-9]' "$conf" || die "config/pgdecomp.toml no longer has health checks on"
    grep -q '^\[server\]' "$conf" || printf '\n[server]\nuser = "gitlab"\npassword = "gitlab"\n' >>"$conf"
    "$bin" run --config "$conf" >"$ROOT/$name.log" 2>&1 &
    PGDECOMP_PID=$!
    bench_wait_listening "$name" "$PGDECOMP_PID" "$port" "$ROOT/$name.log"
}

# bench_wait_listening NAME PID PORT LOG: returns once PORT accepts connections; dies at once,
# with the log's tail, if the process exits first (a port taken since free_port picked it shows
# as "Address already in use"), or after 30 s. The scripts' cleanup removes the log.
bench_wait_listening() {
    local name=$1 pid=$2 port=$3 log=$4 i
    for ((i = 0; i < 300; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log" >&2
            die "$name exited before listening on port $port (its log is above)"
        fi
        sleep 0.1
    done
    tail -n 20 "$log" >&2
    die "timed out after 30 s waiting for $name on port $port (its log is above)"
}

# bench_cleanup: the EXIT trap of instructions.sh and syscalls.sh. Stops the processes of
# TARGETS (pids in PID) and the servers under ROOT, and removes ROOT unless KEEP is set.
# shellcheck disable=SC2317  # invoked by the scripts' traps
bench_cleanup() {
    trap - INT TERM EXIT
    local t
    for t in "${TARGETS[@]}"; do [ -z "${PID[$t]:-}" ] || kill "${PID[$t]}" 2>/dev/null || true; done
    pg_stop_topology "$ROOT" immediate
    if [ -n "${KEEP:-}" ]; then log "kept $ROOT"; else rm -rf "$ROOT"; fi
}

# cpu_ticks PID: utime + stime of the whole process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# raise_fd_limit N: at least N open files for this shell and what it starts (root may raise
# the hard limit too).
raise_fd_limit() {
    local want=$1 hard
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
        ulimit -Hn "$want" 2>/dev/null || log "cannot raise the hard open-file limit to $want (it is $hard)"
    fi
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    [ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge "$want" ] \
        || log "open-file limit $(ulimit -n) is below the $want this run needs"
}
