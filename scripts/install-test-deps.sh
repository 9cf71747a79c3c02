#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust, from Debian packages:
# `promtool` (package prometheus) for tests/deploy_kit.rs. PostgreSQL is
# found or started by tests/support/pg.rs (package postgresql provides the
# binaries for a throwaway cluster). Idempotent; tests/deploy_kit.rs runs it
# when promtool is missing, so `cargo test` alone needs nothing installed by hand.
set -euo pipefail
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
