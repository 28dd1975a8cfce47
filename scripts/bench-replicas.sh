#!/usr/bin/env bash
# Certificates per second for one replica on SQLite, one on PostgreSQL and
# two on PostgreSQL, on this machine, through the full path (`mayfly bench`:
# HTTP, token verification, policy, signing, durable audit).
#
#   scripts/bench-replicas.sh [REQUESTS] [CLIENTS]     # default 20000 64
#   MAYFLY_BIN=/path/to/mayfly scripts/bench-replicas.sh  # another build
#
# It starts a throw-away PostgreSQL (Debian's `postgresql` package, initdb
# into a temp dir as the `postgres` user, 127.0.0.1, a free port, default
# settings: fsync and synchronous_commit on), gives each run a fresh
# database, prints each report, and removes the cluster at the end. Run it
# on an otherwise idle machine; it reports, it does not assert.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

requests=${1:-20000}
clients=${2:-64}

bin=$(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -n 1 || true)
[ -n "$bin" ] || { echo "bench-replicas.sh: install Debian's postgresql package first" >&2; exit 1; }
id postgres >/dev/null 2>&1 || { echo "bench-replicas.sh: no postgres user (install postgresql)" >&2; exit 1; }

# MAYFLY_BIN: a mayfly binary to measure instead of building this tree's.
if [ -n "${MAYFLY_BIN:-}" ]; then
    mayfly=$MAYFLY_BIN
else
    cargo build --release --quiet
    mayfly=$PWD/target/release/mayfly
fi

work=$(mktemp -d /tmp/mayfly-bench-pg.XXXXXX)
chmod 755 "$work"
pgdata=$work/pgdata
mkdir "$work/run" && chown postgres "$work/run"
password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$password" >"$work/pwfile"
chown postgres "$work/pwfile"
cp "$work/pwfile" "$work/password" && chmod 600 "$work/password"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

cleanup() {
    as_pg "$bin/pg_ctl" -D "$pgdata" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir "$pgdata" && chown postgres "$pgdata"
as_pg "$bin/initdb" -D "$pgdata" -U mayfly --pwfile="$work/pwfile" -A scram-sha-256 >/dev/null
as_pg "$bin/pg_ctl" -D "$pgdata" -l "$work/run/pg.log" -w \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$work/run -c max_connections=200 -c shared_preload_libraries=pg_stat_statements" start >/dev/null

psql_q() {
    PGPASSWORD=$password "$bin/psql" -qAt -h 127.0.0.1 -p "$port" -U mayfly "$@"
}
psql_q -d postgres -c "CREATE EXTENSION pg_stat_statements" >/dev/null
fresh_db() {
    psql_q -d postgres -c "CREATE DATABASE $1" >/dev/null
    echo "postgres://mayfly@127.0.0.1:$port/$1?sslmode=disable"
}

# CPU ticks (USER_HZ, 100/s) of the whole PostgreSQL cluster: the
# postmaster with its reaped children, and the live children.
pg_ticks() {
    local pm total=0 pid f
    pm=$(head -n 1 "$pgdata/postmaster.pid")
    f=$(sed 's/.*) //' "/proc/$pm/stat")
    set -- $f
    total=$(( ${12} + ${13} + ${14} + ${15} ))
    for pid in $(pgrep -P "$pm"); do
        f=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        set -- $f
        total=$(( total + ${12} + ${13} ))
    done
    echo "$total"
}
wal_syncs() {
    psql_q -d postgres -c "SELECT wal_sync FROM pg_stat_wal"
}
# The statements the database spent the most time executing (all
# databases): calls, mean time, rows per call.
top_statements() {
    psql_q -d postgres -F ' | ' -c "SELECT calls, round(mean_exec_time::numeric, 3) || ' ms',
            round(rows::numeric / greatest(calls, 1), 1) || ' rows',
            left(regexp_replace(query, '\s+', ' ', 'g'), 90)
        FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 8"
}
# Runs one PostgreSQL bench and adds what the database spent on it.
pg_bench() {
    local before_t before_w out certs t w
    sleep 2
    before_t=$(pg_ticks)
    before_w=$(wal_syncs)
    psql_q -d postgres -c "SELECT pg_stat_statements_reset()" >/dev/null
    out=$("$mayfly" bench --requests "$requests" --concurrency "$clients" --pg-password-file "$work/password" "$@")
    echo "$out"
    sleep 2
    t=$(( $(pg_ticks) - before_t ))
    w=$(( $(wal_syncs) - before_w ))
    certs=$(echo "$out" | awk '/^certificates issued:/ {print $3}')
    awk -v t="$t" -v w="$w" -v c="$certs" 'BEGIN {
        printf "postgresql cpu:      %.0f us per certificate (%.2f s, all its processes)\n", t * 10000 / c, t / 100
        printf "wal flushes:         %d (%.1f certificates per flush)\n", w, (w > 0 ? c / w : 0)
    }'
    echo "statements by time in the database (calls | mean | rows per call | statement):"
    top_statements | sed 's/^/  /'
}

echo "== $(nproc) cores, $requests requests, $clients clients, PostgreSQL $("$bin/postgres" --version | awk '{print $3}')"
echo "== one replica, SQLite"
"$mayfly" bench --requests "$requests" --concurrency "$clients"
echo
echo "== one replica, PostgreSQL"
pg_bench --store-url "$(fresh_db one_replica)"
echo
echo "== two replicas, one PostgreSQL"
pg_bench --store-url "$(fresh_db two_replicas)" --replicas 2
