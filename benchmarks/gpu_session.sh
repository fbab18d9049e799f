#!/usr/bin/env bash
# The open GPU work in one device-tool call, most decisive first. The tests without
# compiling, the captured compiled step's tests, the Triton prototype's checks, the
# best runners' rounds and a 10-client round's profile ran on an H200 on 2026-11-28
# (docs/performance.md, "The H200 calls of 2026-11-28"); what is left:
#
# 0. pytest -m gpu -k "not compiled" tests: the CUDA runtimes' conformance cases
#    without compiling, CUDA evaluation, the runner, again at the call's commit (not
#    the deployment's tests, which need the cryptography the device's image lacks);
# 1. pytest -m gpu -k compiled tests/runtimes/test_conformance.py
#    tests/learning/test_cohort_graphs.py: the conformance suite's two compiled CUDA
#    variants, which have not run on a GPU since 2026-11-27, and the captured
#    compiled step's tests;
# 2. benchmarks/gpu_round_profile.py --cohort 100: where a compiled 100-client
#    round's time goes (at 10 clients the GPU was busy 89 % of it).
#
#   bash benchmarks/prepare_device.sh       # once a machine: .whl/ and .devdata/
#   run(command="bash benchmarks/gpu_session.sh", timeout_s=590, kind="nvidia-h200",
#       carry=[".whl", ".devdata"])
#
# (nvidia-h200: the GPU of the earlier rows). Then here, with the call's files under
# FILES: FILES/gpu_session.log has each step's output and exit status;
#   cp FILES/gpu_round_profile_100.json benchmarks/results/
#
# Without a GPU, the tests run as pytest without -m gpu and the profile as
# python benchmarks/gpu_round_profile.py --device cpu --epochs 1.
set -uo pipefail
started=$SECONDS
export PYTHONUNBUFFERED=1
if ! python3 -c "import pydantic" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null
then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .devdata/fashion-mnist ]; then  # the device has no network to download it
    export FEDLOOM_DATA="$PWD/.devdata"
fi
log="$OUT/gpu_session.log"  # each step's output and exit status
step_done() { echo "== $1: exit status $2 at $((SECONDS - started)) s" | tee -a "$log"; }
# at most 100 + 300 + 150 s; on 2026-11-28 step 0 took 45 s and the 10 tests of
# test_cohort_graphs.py 56 s (compiling), the conformance suite's compiled cases
# some 15 s each on 2026-11-27
timeout 100 python3 -m pytest -p no:cacheprovider -p no:logging -m gpu \
    -k "not compiled" --ignore=tests/deploy --ignore=tests/cli/test_cli_deploy.py \
    tests --tb=short 2>&1 | tee -a "$log" | tail -8
step_done "pytest -m gpu -k 'not compiled' tests" "${PIPESTATUS[0]}"
timeout 300 python3 -m pytest -p no:cacheprovider -p no:logging -m gpu -k compiled \
    tests/runtimes/test_conformance.py tests/learning/test_cohort_graphs.py \
    --tb=short 2>&1 | tee -a "$log" | tail -12
step_done "pytest -m gpu -k compiled" "${PIPESTATUS[0]}"
timeout 150 python3 benchmarks/gpu_round_profile.py --cohort 100 \
    --json "$OUT/gpu_round_profile_100.json" 2>&1 | grep -v -i warn |
    tee -a "$log" | tail -50
step_done "gpu_round_profile.py --cohort 100" "${PIPESTATUS[0]}"
