#!/usr/bin/env bash
# Services for the test run: headless Chromium and a PostgreSQL server on loopback.
#
#   eval "$(.ci/services.sh)"     # then `make test`
#
# Installs Debian's chromium and postgresql if missing (needs root), and the
# pgvector extension (the RAG store's tests), starts a private PostgreSQL cluster on 127.0.0.1 (its own data folder and port, so it
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
PGVER=$(basename "$(dirname "$PGBIN")")

# pgvector: Debian's postgresql-NN-pgvector where the archive has it; bookworm's has
# none, so there it is built from Debian trixie's source package (fetched with apt from
# the machine's own Debian mirror, checked against its signed index) against this server.
install_pgvector() {
  export DEBIAN_FRONTEND=noninteractive
  if apt-cache show "postgresql-$PGVER-pgvector" >/dev/null 2>&1; then
    apt-get install -y -qq --no-install-recommends "postgresql-$PGVER-pgvector" >&2
    return
  fi
  local mirror tmp
  mirror=$(apt-cache policy | awk '$3 ~ /\/main$/ && $2 ~ /debian$/ {print $2; exit}')
  [ -n "$mirror" ] || { log "no Debian mirror in the apt sources to fetch pgvector's source from"; exit 1; }
  log "building pgvector from Debian trixie's source package for PostgreSQL $PGVER"
  apt-get install -y -qq --no-install-recommends "postgresql-server-dev-$PGVER" make gcc >&2
  tmp=$(mktemp -d); chmod 755 "$tmp"  # apt downloads as the _apt user
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
  echo "deb-src $mirror trixie main" > "$tmp/sources.list"
  local apt_src=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
                 -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache")
  apt-get "${apt_src[@]}" update -qq >&2
  (cd "$tmp" && apt-get "${apt_src[@]}" source --download-only -qq pgvector >&2)
  tar -xzf "$tmp"/pgvector_*.orig.tar.gz -C "$tmp"
  make -s -C "$tmp"/pgvector-*/ PG_CONFIG="$PGBIN/pg_config" with_llvm=no >&2
  make -s -C "$tmp"/pgvector-*/ PG_CONFIG="$PGBIN/pg_config" with_llvm=no install >&2
  rm -rf "$tmp"
}
if [ ! -e "/usr/share/postgresql/$PGVER/extension/vector.control" ]; then
  if [ "$(id -u)" != 0 ]; then log "missing pgvector for PostgreSQL $PGVER and not root; install postgresql-$PGVER-pgvector"; exit 1; fi
  install_pgvector
fi
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
# pgvector in the test database; CREATE EXTENSION needs the superuser.
if [ -z "$(psql_ -d "$DB" -tAc "SELECT 1 FROM pg_extension WHERE extname='vector'")" ]; then
  psql_ -d "$DB" -c "CREATE EXTENSION vector" >&2
fi
log "PostgreSQL ready; chromium at $(command -v chromium)"
echo "export RLHFKIT_TEST_PG_URL=postgresql+psycopg://$DB:$PASSWORD@127.0.0.1:$PORT/$DB"
