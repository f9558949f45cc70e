# Sourced by scripts/up and scripts/test: makes sure PostgreSQL and Redis run on this machine,
# starting them when stopped and installing them (Debian packages, as root) when absent.

log() { printf '\033[1m[sluice]\033[0m %s\n' "$*" >&2; }

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

install_packages() {
  if [ "$(id -u)" != 0 ]; then
    log "Missing $*; install them (sudo apt-get install $*) and run this again."
    exit 1
  fi
  log "Installing $* from Debian's packages..."
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if pg_up; then return; fi
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    install_packages postgresql
    fresh_pg=1
  fi
  log "Starting PostgreSQL..."
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
  pg_up || { log "PostgreSQL did not start; see /var/log/postgresql/."; exit 1; }
  if [ "${fresh_pg:-0}" = 1 ]; then
    # A fresh Debian install asks for a password over TCP: give postgres the default one.
    su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  fi
}

ensure_redis() {
  if redis_up; then return; fi
  if ! command -v redis-server >/dev/null; then
    install_packages redis-server
  fi
  log "Starting Redis..."
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 40); do redis_up && break; sleep 0.25; done
  redis_up || { log "Redis did not start; see /var/log/redis/ci.log."; exit 1; }
}

ensure_services() {
  command -v pg_isready >/dev/null || install_packages postgresql-client
  command -v redis-cli >/dev/null || install_packages redis-tools
  # The tests run PgBouncers of their own (transaction pooling) in front of PostgreSQL.
  command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || install_packages pgbouncer
  ensure_postgres
  ensure_redis
}

psql_admin() { PGPASSWORD="${DB_PASSWORD:-postgres}" psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
