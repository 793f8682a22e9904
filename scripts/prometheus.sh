#!/usr/bin/env bash
# Installs Debian's prometheus package (the prometheus server and promtool) when either
# is missing: the observability tests check the alert rules with promtool and scrape a
# real idem serve with a real Prometheus (on ports of their own, whatever the package
# starts).
set -euo pipefail
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
printf 'prometheus.sh: installing prometheus (server and promtool)\n' >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null && command -v prometheus >/dev/null
