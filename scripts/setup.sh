#!/usr/bin/env bash
# Create .venv and install hybridreduce for CPU at the versions the test suite passed on. Usage: scripts/setup.sh [dev]
#   dev: also install the test tools (the `dev` extra).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is the CPU wheel available locally. A looser requirement resolved
# by pip on its own would pull the newest CUDA build (several GB). hybridreduce's own requirement is
# a range that 2.13.0 satisfies, so the next line installs nothing more for torch.
.venv/bin/python -m pip install -q torch==2.13.0
extra=""
if [ "${1:-}" = "dev" ]; then extra="[dev]"; fi
# constraints.txt pins every package to the version the suite and `hybridreduce verify --all` passed on;
# the hooks read transformers' internals, so an unpinned install may get a release nobody has tested.
.venv/bin/python -m pip install -q -c constraints.txt -e ".${extra}"
