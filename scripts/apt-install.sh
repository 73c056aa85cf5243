#!/usr/bin/env bash
# apt-get install the named Debian packages, running `apt-get update` once first.
set -euo pipefail
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
stamp=/tmp/.waypost-apt-updated
if [ ! -e "$stamp" ]; then
  $sudo apt-get update -q >/dev/null
  touch "$stamp"
fi
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$@" >/dev/null
