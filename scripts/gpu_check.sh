#!/usr/bin/env bash
# One command, one JSON: the GPU check of issue 16 (item 5). On one CUDA GPU (an H200: about 6 minutes, at most
# the --budget, default 450 s) it runs
#   - hybridreduce verify --all on CUDA in float32 and in bfloat16;
#   - the bench on a Nemotron-H-8B-shaped model at its real width (52 blocks, hidden 4096) in bfloat16 at 16k and
#     64k visual tokens, keep 0.25: SDPA; flash attention if flash_attn imports; with mamba-ssm / causal-conv1d's
#     kernels if they import, and then on transformers' torch Mamba path too;
#   - where the kernels import, a check that the scores on the kernel path equal those on the torch path.
# Nothing is compiled or installed: what is importable is used, what is not is recorded as skipped.
#
#   bash scripts/gpu_check.sh                                  # writes runs/gpu_check.json (and runs/gpu_check_parts/)
#   bash scripts/gpu_check.sh --out runs/gpu_check.json --budget 420
#   bash scripts/gpu_check.sh --cpu-smoke --out /tmp/smoke.json  # the same steps at tiny sizes on the CPU
#
# Exit status 0 when verify passed in both dtypes, a bench ran and the score comparison passed (or was skipped).
# The interpreter is .venv/bin/python when there is one, else python3 (or --python PATH). It runs from the
# repository root: a relative --out is relative to it.
set -uo pipefail
cd "$(dirname "$0")/.."
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
exec "$python" scripts/gpu_check.py --python "$python" "$@"
