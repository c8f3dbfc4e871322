#!/bin/sh
# PostgreSQL on the debootstrap base (docker-compose.local.yml), standing in for the official postgres
# image's entrypoint with the same variables: on the first start it initialises $PGDATA with the superuser
# POSTGRES_USER and its password POSTGRES_PASSWORD (scram-sha-256 over TCP from any address; the socket
# inside the container trusts its own users), creates POSTGRES_DB, then runs postgres in the foreground.
# Runs as the postgres user (compose `user: postgres`); $PGDATA is a volume owned by it.
set -eu
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set}"
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
bin=/usr/lib/postgresql/15/bin
PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA
case "$user$db" in
  *[!a-z0-9_]*) echo "POSTGRES_USER and POSTGRES_DB must be lowercase letters, digits and _ (got '$user', '$db')" >&2; exit 2 ;;
esac
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  "$bin/initdb" -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    # Single-user mode: no server, no socket, nothing listening before the database exists.
    echo "CREATE DATABASE $db OWNER $user" | "$bin/postgres" --single -D "$PGDATA" postgres >/dev/null
  fi
  echo "postgres-entrypoint: initialised $PGDATA (user $user, database $db)"
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp
