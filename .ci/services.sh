#!/usr/bin/env bash
# Services for the test run: headless Chromium and a PostgreSQL server on loopback.
#
#   eval "$(.ci/services.sh)"     # then `make test`
#
# Installs Debian's chromium and postgresql if missing (needs root), starts a
# private PostgreSQL cluster on 127.0.0.1 (its own data folder and port, so it
# never touches a system cluster), creates a role and database for the tests,
# and prints one line for eval:
#   export RLHFKIT_TEST_PG_URL=postgresql+psycopg://rlhfkit_test:...@127.0.0.1:PORT/rlhfkit_test
# Everything else goes to stderr. Safe to run twice: it reuses what is there.
set -euo pipefail

BASE=${RLHFKIT_PG_DIR:-/var/tmp/rlhfkit-pg}
PORT=${RLHFKIT_PG_PORT:-54329}
DB=rlhfkit_test
log() { echo "services: $*" >&2; }

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || need+=(postgresql)
if ((${#need[@]})); then
  if [ "$(id -u)" != 0 ]; then log "missing ${need[*]} and not root; install them"; exit 1; fi
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
# Run PostgreSQL as the `postgres` user when root (it refuses to run as root).
if [ "$(id -u)" = 0 ]; then as_pg() { runuser -u postgres -- "$@"; }; OWNER=postgres; else as_pg() { "$@"; }; OWNER=$(id -un); fi

mkdir -p "$BASE"
chown "$OWNER" "$BASE"
chmod 700 "$BASE"
PWFILE="$BASE/password"
if [ ! -s "$PWFILE" ]; then
  (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$PWFILE")
  chown "$OWNER" "$PWFILE"
fi
PASSWORD=$(cat "$PWFILE")

if [ ! -s "$BASE/data/PG_VERSION" ]; then
  log "initdb in $BASE/data"
  as_pg "$PGBIN/initdb" -D "$BASE/data" -U postgres -A scram-sha-256 --pwfile="$PWFILE" >/dev/null
fi
if ! as_pg "$PGBIN/pg_ctl" -D "$BASE/data" status >/dev/null 2>&1; then
  log "starting PostgreSQL on 127.0.0.1:$PORT"
  as_pg "$PGBIN/pg_ctl" -D "$BASE/data" -l "$BASE/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $BASE -c fsync=off" start >/dev/null
fi

# Role and database for the tests (password = the superuser's; the cluster is private and on loopback).
export PGPASSWORD=$PASSWORD
psql_() { "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
if [ -z "$(psql_ -tAc "SELECT 1 FROM pg_roles WHERE rolname='$DB'")" ]; then
  psql_ -c "CREATE ROLE $DB LOGIN PASSWORD '$PASSWORD'" >&2
fi
if [ -z "$(psql_ -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'")" ]; then
  psql_ -c "CREATE DATABASE $DB OWNER $DB" >&2
fi
log "PostgreSQL ready; chromium at $(command -v chromium)"
echo "export RLHFKIT_TEST_PG_URL=postgresql+psycopg://$DB:$PASSWORD@127.0.0.1:$PORT/$DB"
