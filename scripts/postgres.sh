#!/usr/bin/env bash
# Makes sure the tests have a PostgreSQL server, and prints its URL on the last line of stdout.
# When something answers at COWORKER_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres), that
# is the one. Otherwise it installs Debian's `postgresql` package when missing and starts a throwaway cluster as
# the `postgres` user (initdb refuses root) in a temporary folder, on a free port, with trust authentication; the
# cluster is stopped and removed when the process that sourced this script exits (see scripts/test.sh).
# Usage: URL=$(./scripts/postgres.sh start)   ./scripts/postgres.sh stop DIR
set -euo pipefail
DEFAULT=postgres://postgres@127.0.0.1:5432/postgres
URL=${COWORKER_TEST_DATABASE_URL:-$DEFAULT}

answers() {
  # A TCP connection and a PostgreSQL answer (pg_isready, when the client is installed).
  local hostport=${1#*@}; hostport=${hostport%%/*}
  local host=${hostport%%:*} port=${hostport##*:}
  [ "$host" = "$port" ] && port=5432
  if command -v pg_isready >/dev/null; then pg_isready -q -h "$host" -p "$port" -t 2; else (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; fi
}

case "${1:-start}" in
  start)
    if answers "$URL"; then echo "$URL"; exit 0; fi
    BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$BIN" ]; then
      echo "postgres: installing the postgresql package" >&2
      SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
      $SUDO apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >&2
      BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    DIR=$(mktemp -d /tmp/coworker-pg.XXXXXX)
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    RUN=()
    if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; RUN=(su postgres -c); fi
    as_pg() { if [ ${#RUN[@]} -gt 0 ]; then "${RUN[@]}" "$*"; else bash -c "$*"; fi; }
    as_pg "$BIN/initdb -D $DIR/data -A trust -U postgres" >&2
    as_pg "$BIN/pg_ctl -D $DIR/data -o '-p $PORT -k $DIR -c listen_addresses=127.0.0.1' -l $DIR/log -w start" >&2
    echo "postgres: a throwaway cluster in $DIR on port $PORT" >&2
    echo "postgres://postgres@127.0.0.1:$PORT/postgres $DIR"
    ;;
  stop)
    DIR=$2
    BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    if [ "$(id -u)" = 0 ]; then su postgres -c "$BIN/pg_ctl -D $DIR/data -m immediate stop" >&2 || true
    else "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >&2 || true; fi
    rm -rf "$DIR"
    ;;
esac
