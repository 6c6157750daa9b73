#!/bin/sh
# The chart's bundled PostgreSQL (postgresql.bundled): Debian's server, run as the image's
# non-root user with a read-only root filesystem. The first start makes the cluster under
# $PGDATA (a folder of the mounted volume), a password-protected role `aijobs` and one database
# per name in $POSTGRES_DATABASES; later starts only serve.
set -eu
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
: "${PGDATA:?PGDATA names the data folder}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  pwfile=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  "$BIN/initdb" -D "$PGDATA" -U aijobs --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/tmp" -w start >/dev/null
  for db in ${POSTGRES_DATABASES:-}; do
    "$BIN/createdb" -h /tmp -U aijobs "$db"
  done
  "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  echo "initialised $PGDATA with databases: ${POSTGRES_DATABASES:-none}"
fi
exec "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp
