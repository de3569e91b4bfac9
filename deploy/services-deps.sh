#!/bin/sh
# Obtain what the local stack needs besides Python, or say in one line per system how to get it.
# Skipped when KAFKA_BOOTSTRAP_SERVERS and REDIS_URL point at services somebody already runs (the
# Makefile sets them for a running `docker compose up`). With PY (the venv's Python), Kafka's jars
# are fetched too.
set -eu
if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && [ -n "${REDIS_URL:-}" ]; then
  exit 0
fi
missing=0
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "services-deps: installing redis-server from the distribution (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "services-deps: redis-server is missing; install it: Debian/Ubuntu 'sudo apt-get install redis-server'," \
      "Fedora 'sudo dnf install redis', macOS 'brew install redis'" >&2
    missing=1
  fi
fi
for tool in java mvn; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "services-deps: $tool is missing; install Java 17+ and Maven: Debian/Ubuntu" \
      "'sudo apt-get install openjdk-17-jre-headless maven', Fedora 'sudo dnf install java-17-openjdk maven'," \
      "macOS 'brew install openjdk@17 maven'" >&2
    missing=1
  fi
done
if [ "$missing" = 1 ] && command -v docker >/dev/null 2>&1; then
  echo "services-deps: or, with Docker: 'docker compose up -d kafka redis' (make then uses them)" >&2
fi
if [ "$missing" = 0 ] && [ -n "${PY:-}" ]; then
  # Kafka's jars from Maven Central, before any test's clock runs (cached: a no-op after once).
  "$PY" -c "from devtools.stack.local import ensure_kafka_jars; ensure_kafka_jars()"
fi
exit "$missing"
