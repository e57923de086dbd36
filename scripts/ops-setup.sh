#!/usr/bin/env bash
# Install the operations tools the tests run (Prometheus and promtool), idempotently.
# The tests start a real Prometheus on loopback and run `promtool check/test rules`; both come from
# the distribution's `prometheus` package. Nothing happens when both commands are already there.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ops-setup: install Prometheus (prometheus and promtool on PATH); no apt-get here" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
install() {
    $sudo apt-get install -y --no-install-recommends prometheus
}
# A stale or empty package list makes the first install fail; refresh it only then.
if ! install; then
    $sudo apt-get update
    install
fi
# The package starts a system service where an init system runs; the tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $sudo systemctl stop prometheus || true
fi
echo "ops tools ready: $(prometheus --version 2>&1 | head -n 1)"
