#!/usr/bin/env bash
# The open GPU work in one device-tool call, most decisive first. The rounds and
# the profile of every runner ran on an H200 on 2026-11-27 (benchmarks/results/
# gpu_speed_session.json, gpu_profile_compiled.json; their commands are in
# docs/performance.md); what is left:
#
# 0. pytest -m gpu -k "not compiled" tests: the CUDA runtimes' conformance cases
#    without compiling (the cohort's example gather and the finiteness checks
#    changed since they last ran on a GPU), CUDA evaluation, the runner (not the
#    deployment's tests, which need the cryptography the device's image lacks);
# 1. pytest -m gpu tests/learning/test_cohort_graphs.py (the captured compiled
#    step, edited since it last ran on a GPU);
# 2. benchmarks/triton_client_conv.py --device cuda: the Triton kernels against
#    float64, now on the digits CNN's own shapes too (8 x 8, and 4 x 4 under a
#    5 x 5 kernel);
# 3. benchmarks/compiled_client_conv.py --device cuda: three SGD steps of the digits
#    CNN compiled with cuDNN, eager with the Triton kernels through vmap's rule,
#    compiled with both convolutions routed to them and with the second only, each
#    against float64 steps (the Triton rows against float64 steps whose same
#    convolutions round their operands to TF32, benchmarks/tf32_reference.py), and
#    each routed operator's call against the aten one it replaced. On 2026-11-27
#    the routed step came out up to 22 % of the largest change off plain float64,
#    where cuDNN's was 3.3e-4 off; on the CPU, float32 steps whose convolutions
#    truncate their operands to TF32 reproduce that to three digits. This checks
#    the Triton rows' steps on the GPU itself;
# 4. benchmarks/gpu_round_profile.py: where a compiled 10-client round's time goes
#    beyond its 300 steps (20 to 28 % of it on 2026-11-27);
# 5. benchmarks/mcmahan2017/gpu.sh --rerun-best with the seconds left: the IID CNN's
#    E = 20, B = inf best run (its checkpoint in runs/ resumes it), whose curve the
#    IID CNN figure waits for.
#
#   bash benchmarks/prepare_device.sh       # once a machine: .whl/ and .devdata/
#   run(command="FEDLOOM_COMMIT=<git rev-parse --short HEAD, here> \
#                bash benchmarks/gpu_session.sh 560", timeout_s=590, kind="nvidia-h200",
#       carry=[".whl", ".devdata", "runs/mcmahan2017/fashion_mnist/cnn"])
#
# (nvidia-h200: the GPU of the earlier CNN rows). Then here, with the call's files
# under FILES: FILES/gpu_session.log has each step's output and exit status;
#   cp FILES/gpu_round_profile.json benchmarks/results/
# and benchmarks/mcmahan2017/gpu.sh says what to do with the rest.
#
# Without a GPU (DEVICE=cpu OUT=/tmp/out bash benchmarks/gpu_session.sh SECONDS) only
# step 5 runs (benchmarks/mcmahan2017/gpu.sh has a dry run of its own); the other
# steps run here as TRITON_INTERPRET=1 python benchmarks/... without --device
# (Triton installed) and as pytest without -m gpu.
set -uo pipefail
budget="${1:-560}"
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
device="${DEVICE:-cuda}"
log="$OUT/gpu_session.log"  # each step's output and exit status
step_done() { echo "== $1: exit status $2 at $((SECONDS - started)) s" | tee -a "$log"; }
# at most 100 + 120 + 90 + 60 + 150 s on a GPU (step 1 compiles four steps, some
# 15 s each; step 4 runs before steps 2 and 3); the McMahan rerun takes what is left
if [ "$device" = cuda ]; then
    timeout 100 python3 -m pytest -p no:cacheprovider -p no:logging -m gpu \
        -k "not compiled" --ignore=tests/deploy --ignore=tests/cli/test_cli_deploy.py \
        tests --tb=short 2>&1 | tee -a "$log" | tail -8
    step_done "pytest -m gpu -k 'not compiled' tests" "${PIPESTATUS[0]}"
    timeout 120 python3 -m pytest -p no:cacheprovider -p no:logging -m gpu \
        tests/learning/test_cohort_graphs.py --tb=short 2>&1 | tee -a "$log" | tail -8
    step_done "pytest -m gpu test_cohort_graphs.py" "${PIPESTATUS[0]}"
    timeout 90 python3 benchmarks/gpu_round_profile.py \
        --json "$OUT/gpu_round_profile.json" 2>&1 | tee -a "$log" | tail -50
    step_done "gpu_round_profile.py" "${PIPESTATUS[0]}"
    timeout 60 python3 benchmarks/triton_client_conv.py --device cuda 2>&1 |
        tee -a "$log" | tail -8
    step_done "triton_client_conv.py --device cuda" "${PIPESTATUS[0]}"
    timeout 150 python3 benchmarks/compiled_client_conv.py --device cuda 2>&1 |
        grep -v -i warn | tee -a "$log" | tail -16
    step_done "compiled_client_conv.py --device cuda" "${PIPESTATUS[0]}"
fi
left=$((budget - (SECONDS - started)))
if [ "$left" -gt 60 ]; then
    SWEEP_ARGS="--rerun-best" bash benchmarks/mcmahan2017/gpu.sh "$left"
else
    echo "no time left for benchmarks/mcmahan2017/gpu.sh ($left s)"
fi
