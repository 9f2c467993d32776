# shellcheck shell=bash
# Shared shell code for scripts/demo, scripts/test and benches/pgbench.sh: package installs and
# throwaway PostgreSQL clusters built from the same fixtures as the Rust test harness
# (tests/fixtures/*), so the demo, the benchmarks and the tests see the same servers.

PG_BIN=/usr/lib/postgresql/15/bin
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FIXTURES="$REPO_ROOT/tests/fixtures"
# Upper bound in seconds for every wait below.
WAIT_SECONDS=30

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs the given Debian packages that are missing; runs apt-get update at most once.
ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    log "installing ${missing[*]}"
    if [ -z "${APT_UPDATED:-}" ]; then
        "${sudo[@]}" apt-get update -qq
        APT_UPDATED=1
    fi
    # Retried once: the first install on a fresh machine once failed with a transient
    # "dpkg: error: cannot stat pathname '/tmp/apt-dpkg-install-...'", and a retry succeeded.
    local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends)
    "${sudo[@]}" "${install[@]}" "${missing[@]}" \
        || { log "apt-get install failed; retrying once"; "${sudo[@]}" "${install[@]}" "${missing[@]}"; }
}

# ensure_python_drivers: psycopg 3 and asyncpg from PyPI (pinned in
# tests/drivers/python/requirements.txt), for the driver tests and compare.sh's idle clients.
ensure_python_drivers() {
    python3 -c 'import psycopg, asyncpg' 2>/dev/null && return 0
    log "installing psycopg and asyncpg"
    # A Debian-managed python3 refuses system-wide installs (PEP 668) unless told.
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        -r "$REPO_ROOT/tests/drivers/python/requirements.txt" ||
        python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
            --break-system-packages -r "$REPO_ROOT/tests/drivers/python/requirements.txt"
}

# PostgreSQL refuses to run as root, so server commands run as postgres when we are root.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Makes a directory the server user can own data directories in.
pg_prepare_root() {
    mkdir -p "$1"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres:postgres "$1"
        runuser -u postgres -- test -x "$1" \
            || die "user postgres cannot reach $1 (a parent directory is not traversable)"
    fi
}

# A loopback TCP port nobody listens on right now, below the kernel's ephemeral range: a port
# in that range may be the local end of an outgoing connection (the benches open thousands),
# and a listener cannot bind it then (EADDRINUSE), though nothing listens there.
free_port() {
    local port low=32768 span
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    span=$((low - 20000))
    [ "$span" -ge 2000 ] || span=40000
    while :; do
        port=$((20000 + RANDOM % span))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

# Polls a command every 0.2 s until it succeeds; dies naming $1 after WAIT_SECONDS.
wait_for() {
    local what=$1 deadline=$((SECONDS + WAIT_SECONDS))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${WAIT_SECONDS}s waiting for $what"
        sleep 0.2
    done
}

# Superuser psql over the server's Unix socket (in its data dir): pg_psql DATA PORT DB ARGS...
pg_psql() {
    local data=$1 port=$2 db=$3
    shift 3
    "$PG_BIN/psql" -X -At -v ON_ERROR_STOP=1 -h "$data" -p "$port" -U postgres -d "$db" "$@"
}

pg_conf() {
    local data=$1 port=$2
    {
        printf '\n# pgdecomp scripts\n'
        cat "$FIXTURES/postgresql.conf"
        printf "port = %s\nunix_socket_directories = '%s'\n" "$port" "$data"
    } | as_pg tee -a "$data/postgresql.conf" >/dev/null
}

pg_start() {
    as_pg "$PG_BIN/pg_ctl" -D "$1" -l "$1.log" -w -t "$WAIT_SECONDS" start >/dev/null \
        || die "could not start the server in $1; log: $1.log"
}

# pg_stop DATA [MODE]; quiet and harmless when the server is not running.
pg_stop() {
    [ -f "$1/postmaster.pid" ] || return 0
    as_pg "$PG_BIN/pg_ctl" -D "$1" -m "${2:-fast}" -w -t "$WAIT_SECONDS" stop >/dev/null 2>&1 || true
}

# pg_init_primary DATA PORT: initdb, fixture config, roles and the GitLab tables.
pg_init_primary() {
    local data=$1 port=$2
    as_pg "$PG_BIN/initdb" -D "$data" -U postgres -A trust --no-sync -E UTF8 --locale C >/dev/null
    as_pg tee "$data/pg_hba.conf" <"$FIXTURES/pg_hba.conf" >/dev/null
    pg_conf "$data" "$port"
    pg_start "$data"
    pg_psql "$data" "$port" postgres -q -f "$FIXTURES/roles.sql" >/dev/null
    pg_psql "$data" "$port" gitlabhq_production -q -f "$FIXTURES/gitlab.sql" >/dev/null
}

# pg_init_replica UPSTREAM_DATA UPSTREAM_PORT DATA PORT: a streaming replica via pg_basebackup -R.
# (The upstream's socket lives in its data dir, hence the filtered "skipping special file".)
pg_init_replica() {
    local up_data=$1 up_port=$2 data=$3 port=$4
    as_pg "$PG_BIN/pg_basebackup" -h "$up_data" -p "$up_port" -U postgres -D "$data" \
        -R -X stream -c fast --no-sync 2> >(grep -v 'skipping special file' >&2)
    pg_conf "$data" "$port"
    pg_start "$data"
}

# pg_wait_replay PRIMARY_DATA PRIMARY_PORT REPLICA_DATA REPLICA_PORT
pg_wait_replay() {
    local lsn
    lsn=$(pg_psql "$1" "$2" postgres -c 'select pg_current_wal_lsn()')
    wait_for "the replica on port $4 to replay $lsn" \
        test_sql "$3" "$4" "select pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn"
}

# test_sql DATA PORT SQL: succeeds when the query returns 't'.
test_sql() {
    [ "$(pg_psql "$1" "$2" postgres -c "$3" 2>/dev/null)" = t ]
}

# pg_build_topology ROOT MAIN_PORT [MAIN_REPLICA_PORT CI_PORT CI_REPLICA_PORT]
# Data dirs: ROOT/{main_primary,main_replica,ci_primary,ci_replica}.
pg_build_topology() {
    local root=$1
    pg_prepare_root "$root"
    log "main primary on 127.0.0.1:$2"
    pg_init_primary "$root/main_primary" "$2"
    [ $# -ge 5 ] || return 0
    log "main replica on 127.0.0.1:$3"
    pg_init_replica "$root/main_primary" "$2" "$root/main_replica" "$3"
    log "CI standby leader on 127.0.0.1:$4 (streaming from the main primary)"
    pg_init_replica "$root/main_primary" "$2" "$root/ci_primary" "$4"
    log "CI cascading replica on 127.0.0.1:$5 (streaming from the CI standby leader)"
    pg_init_replica "$root/ci_primary" "$4" "$root/ci_replica" "$5"
    pg_wait_replay "$root/main_primary" "$2" "$root/main_replica" "$3"
    pg_wait_replay "$root/main_primary" "$2" "$root/ci_primary" "$4"
    pg_wait_replay "$root/main_primary" "$2" "$root/ci_replica" "$5"
}

# pg_stop_topology ROOT [MODE]
pg_stop_topology() {
    local node
    for node in ci_replica main_replica ci_primary main_primary; do
        [ -d "$1/$node" ] && pg_stop "$1/$node" "${2:-fast}"
    done
    return 0
}

# pg_promote DATA PORT: promotes a standby and waits until it accepts writes.
pg_promote() {
    as_pg "$PG_BIN/pg_ctl" -D "$1" -w -t "$WAIT_SECONDS" promote >/dev/null
    wait_for "the server on port $2 to leave recovery" test_sql "$1" "$2" 'select not pg_is_in_recovery()'
}

# The SCRAM verifier PostgreSQL stored for a role, for a PgBouncer-style auth file.
pg_scram_verifier() {
    pg_psql "$1" "$2" postgres -c "select rolpassword from pg_authid where rolname = '$3'"
}

# write_pgdecomp_config OUT PHASE_FILE LISTEN METRICS MAIN_PRIMARY 'MAIN_REPLICAS' CI_PRIMARY 'CI_REPLICAS' [POOL_SIZE]
# Rewrites config/pgdecomp.toml (the format contract) with the given addresses, so scripts
# never drift from the documented format. Replica lists are TOML array bodies, e.g. '"h:p"'.
write_pgdecomp_config() {
    local out=$1 phase=$2 listen=$3 metrics=$4 main=$5 main_replicas=$6 ci=$7 ci_replicas=$8
    local pool_size=${9:-20} section=
    local line
    while IFS= read -r line; do
        case $line in
            '['*) section=$line ;;
        esac
        case "$section|$line" in
            "|listen = "*) line="listen = \"$listen\"" ;;
            "|metrics_listen = "*) line="metrics_listen = \"$metrics\"" ;;
            "|phase_file = "*) line="phase_file = \"$phase\"" ;;
            "[pool]|pool_size = "*) line="pool_size = $pool_size" ;;
            "[clusters.main]|primary = "*) line="primary = \"$main\"" ;;
            "[clusters.main]|replicas = "*) line="replicas = [$main_replicas]" ;;
            "[clusters.ci]|primary = "*) line="primary = \"$ci\"" ;;
            "[clusters.ci]|replicas = "*) line="replicas = [$ci_replicas]" ;;
            "[classify]|dictionary = \""*) line="dictionary = \"$REPO_ROOT/config/${line#dictionary = \"}" ;;
            "[classify]|schema_rules = \""*)
                local rules=${line#schema_rules = \"}
                rules=${rules%\"}
                # Keep the default when the repository does not ship the rules file.
                [ -f "$REPO_ROOT/config/$rules" ] || continue
                line="schema_rules = \"$REPO_ROOT/config/$rules\""
                ;;
        esac
        printf '%s\n' "$line"
    done <"$REPO_ROOT/config/pgdecomp.toml" >"$out"
}

# phase_file_for N DIR: the repository's phases/phase-N.toml, or a stand-in written into DIR.
phase_file_for() {
    local shipped="$REPO_ROOT/phases/phase-$1.toml"
    if [ -f "$shipped" ]; then
        echo "$shipped"
    else
        log "phases/phase-$1.toml not found; using a stand-in $2/phase-$1.toml"
        printf 'phase = %s\n' "$1" >"$2/phase-$1.toml"
        echo "$2/phase-$1.toml"
    fi
}

# run_pgbench LOGDIR PORT ARGS...: pgbench as gitlab for $DURATION s with $CLIENTS clients;
# prints "tps latency_ms", or "fail fail" (output appended to LOGDIR/pgbench-failures.log).
run_pgbench() {
    local dir=$1 port=$2 out
    shift 2
    if out=$(PGPASSWORD=gitlab timeout $((DURATION + 60)) "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" \
        -U gitlab -n -c "$CLIENTS" -j 2 -T "$DURATION" "$@" gitlabhq_production 2>&1) \
        && grep -q 'number of failed transactions: 0 ' <<<"$out"; then
        awk '/^tps = / { tps = $3 } /^latency average = / { lat = $4 } END { printf "%.0f %.3f\n", tps, lat }' <<<"$out"
    else
        printf '%s\n' "$out" >>"$dir/pgbench-failures.log"
        echo "fail fail"
    fi
}
