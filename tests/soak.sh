#!/usr/bin/env bash
# The soak run: the release binary for a bounded time under token churn, session churn and
# reloads, with RSS and open descriptors sampled (benches/soak/main.rs says what it checks).
#
#   bash tests/soak.sh            # 10 minutes
#   bash tests/soak.sh 60         # one minute (what tests/run.sh runs in CI)
#
# SOAK_CLIENTS and SOAK_RELOAD_SECONDS are passed through. Exit status 1 when the soak fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_SECONDS="${1:-${SOAK_SECONDS:-600}}"
exec cargo bench --bench soak
