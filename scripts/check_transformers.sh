#!/usr/bin/env bash
# Test one transformers release in a virtualenv of its own (.venv-transformers-VERSION): the tests that depend on
# transformers' internals and `hybridreduce verify --all`, then a summary of what broke.
#   bash scripts/check_transformers.sh 5.23.0            # the lowest supported release (CI runs this)
#   bash scripts/check_transformers.sh 5.25.0 --all      # a new release, whole suite
# Everything except transformers comes from constraints.txt. A release outside the package's requirement range is
# installed anyway (pip warns), so that a new minor can be checked before the range admits it.
set -uo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: bash scripts/check_transformers.sh VERSION [--all]}
python=${PYTHON:-python3}
venv=.venv-transformers-$version
log=$venv/install.log
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv" || exit 2
{
  "$venv/bin/python" -m pip install -q --upgrade pip &&
  "$venv/bin/python" -m pip install -q torch==2.13.0 &&
  "$venv/bin/python" -m pip install -q -c constraints.txt -e ".[dev]" &&
  "$venv/bin/python" -m pip install -q "transformers==$version"
} >"$log" 2>&1 || { tail -5 "$log"; echo "check_transformers: could not install transformers==$version (log: $log)"; exit 2; }
installed=$("$venv/bin/python" -c "import transformers; print(transformers.__version__)")
echo "check_transformers: transformers $installed in $venv"

# The tests that touch transformers' call signatures, registries, EVS and processors, the attention functions merging
# biases, and the Trainer, gradient checkpointing and peft wrappers finetuning runs under (or all of them with --all).
tests=(tests/test_compat.py tests/test_capture.py tests/test_engine.py tests/test_scorers.py tests/test_adapters.py
       tests/test_evs.py tests/test_vlm.py tests/test_run.py tests/test_verify.py tests/test_invariants.py
       tests/test_bench.py tests/test_merge.py tests/test_finetune.py)
[ "${2:-}" = "--all" ] && tests=(tests)
"$venv/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}" >"$venv/pytest.log" 2>&1; rc_t=$?
"$venv/bin/hybridreduce" verify --all >"$venv/verify.log" 2>&1; rc_v=$?

echo "pytest: $(tail -1 "$venv/pytest.log")"
grep -E "^(FAILED|ERROR) " "$venv/pytest.log" | head -40
echo "verify --all: $(grep -cE "\bPASS\b" "$venv/verify.log") pass, $(grep -cE "\bFAIL\b" "$venv/verify.log") fail"
grep -E "\bFAIL\b" "$venv/verify.log" | head -20
if [[ $rc_t == 0 && $rc_v == 0 ]]; then
  echo "check_transformers: transformers $installed passes"
else
  echo "check_transformers: transformers $installed FAILS (logs: $venv/pytest.log, $venv/verify.log)"; exit 1
fi
