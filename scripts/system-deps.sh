#!/usr/bin/env bash
# The system tools the test suite runs for real, installed when missing:
#   etcd, etcdctl (etcd-server, etcd-client)  cluster mode
#   dig (bind9-dnsutils), dnsperf, dnsmasq    DNS tests and benchmark
#   haproxy                                    server-side discovery through DNS
#   node + npm, the npm `consul` package       a second, non-Python Consul client
#   chromium + npm `playwright-core`           the web UI in a real browser
#   patroni + python3-consul, postgresql       Patroni using waypost as its Consul (KV, sessions)
#   firefox-esr                                the web UI in Firefox too (Marionette)
#   dockerd, docker-compose, debootstrap       the Docker Compose example, end to end
#   victoria-metrics                           a real consul_sd_configs consumer
#   openssl                                    hashed CA directories (CONSUL_CAPATH)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v dig >/dev/null || need+=(bind9-dnsutils)
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v haproxy >/dev/null || need+=(haproxy)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v chromium >/dev/null || need+=(chromium)
[ -x /usr/bin/patroni ] || need+=(patroni)
/usr/bin/python3 -c "import consul" 2>/dev/null || need+=(python3-consul)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v firefox-esr >/dev/null || need+=(firefox-esr)
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v victoria-metrics >/dev/null || need+=(victoria-metrics)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  scripts/apt-install.sh "${need[@]}"
fi
if [ ! -d tests/node/node_modules/consul ] || [ ! -d tests/node/node_modules/playwright-core ]; then
  echo "installing the Node.js test dependencies (consul client, playwright-core)"
  (cd tests/node && npm install --no-audit --no-fund --silent)
fi
