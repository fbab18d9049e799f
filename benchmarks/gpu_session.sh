#!/usr/bin/env bash
# The open GPU work in one device-tool call, most decisive first:
#
# 1. pytest -m gpu, tests no GPU has run yet: the conformance suite on
#    VectorizedRuntime("cuda", compile=True) (with graphs, the default; the
#    variant without graphs only in its client-Adam test, for time) and that
#    test, with the CUDA tolerance of 2026-11-27, on every CUDA variant (the other
#    GPU tests passed on an H200 that day), and the compiled step with the Triton
#    convolutions routed into it against float64 eager steps
#    (benchmarks/compiled_client_conv.py, after benchmarks/triton_client_conv.py's
#    own check of its kernels, the first convolution's few-channel ones new), each
#    step's exit status in
#    $OUT/gpu_session.log; then two rounds
#    of examples/fashion_mnist_cnn_iid.toml with --set device=cuda (the config's
#    way to the compiled CUDA runtime, as the example's comment advises);
# 2. benchmarks/gpu_speed.py, whole FedAvg rounds at cohorts 10 and 100: the
#    graph runner, the compiled one, the compiled one with the Triton prototype's
#    convolutions routed into it by a compiler pass (benchmarks/
#    compiled_client_conv.py: the second convolution only, then both), the
#    compiled one in bfloat16 mixed precision (the model's autocast), the Triton
#    prototype for the second convolution uncompiled ("graphs triton-conv2 flat")
#    and for both ("graphs triton-conv flat") and the compiled one with TF32
#    matrix products (2026-11-27's fastest rows again), then the two with the
#    first convolution as a matrix product
#    (benchmarks/matmul_first_conv.py); gpu_speed.py starts no measurement
#    once its budget is spent, and it runs every runner at 10 clients before
#    any at 100, so the later runners lose their 100-client rows first;
# 3. with the seconds left, benchmarks/gpu_profile.py --convs compiled-triton
#    compiled: where the compiled step's GPU time goes, with the Triton kernels
#    routed into it and without (its kernels, launches and captured step time;
#    fp32, TF32, bf16);
# 4. benchmarks/mcmahan2017/gpu.sh --rerun-best with the seconds left: the IID
#    CNN's E = 20, B = inf best run, cut off by the budget on 2026-11-27 (its
#    checkpoint in runs/ resumes it), whose curve the IID CNN figure waits for
#    (what it needs, .whl/ and .devdata/, both ignored by git: `bash
#    benchmarks/prepare_device.sh` once a machine).
#
#   run(command="FEDLOOM_COMMIT=<git rev-parse --short HEAD, here> \
#                bash benchmarks/gpu_session.sh 560", timeout_s=590, kind="nvidia-h200",
#       carry=[".whl", ".devdata", "runs/mcmahan2017/fashion_mnist/cnn"])
#
# (nvidia-h200: the GPU of the earlier CNN rows). Then here, with the call's files
# under FILES:
#
#   cp FILES/gpu_profile_compiled.json FILES/gpu_speed_session.json benchmarks/results/
#   (FILES/gpu_session.log: the tests, the example run and each step's exit status)
#   and what benchmarks/mcmahan2017/gpu.sh says for the rest.
#
# A dry run without a GPU (the tests, the profile and the Triton rows need one):
#   DEVICE=cpu OUT=/tmp/out SPEED_ARGS="--sizes 2 --rounds 1" \
#       bash benchmarks/gpu_session.sh 60
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
log="$OUT/gpu_session.log"  # each step's exit status, the tests and the example
step_done() { echo "== $1: exit status $2 at $((SECONDS - started)) s" | tee -a "$log"; }
runners=(graphs "graphs compiled")
triton_runners=("graphs compiled triton-conv2 flat" "graphs compiled triton-conv flat")
later_runners=("graphs compiled bf16" "graphs triton-conv2 flat" "graphs triton-conv flat"
    "graphs compiled tf32" "graphs compiled matmul-conv1" "graphs matmul-conv1")
# at most 130 + 50 + 70 + 50 s on a GPU, then 230 for the rounds: 530 (the
# checks' times are guesses: Triton compiles each kernel and tiling once, inductor
# the step); the profile and the McMahan rerun take what is left
if [ "$device" = cuda ]; then
    timeout 130 python3 -m pytest -p no:cacheprovider -p no:logging -m gpu \
        tests/runtimes/test_conformance.py -k "cuda-graphs-compiled or adam" \
        --tb=short 2>&1 | tee -a "$log" | tail -25
    step_done "pytest -m gpu" "${PIPESTATUS[0]}"
    timeout 50 python3 benchmarks/triton_client_conv.py --device cuda 2>&1 |
        tee -a "$log" | tail -4
    step_done "triton_client_conv.py --device cuda" "${PIPESTATUS[0]}"
    timeout 70 python3 benchmarks/compiled_client_conv.py --device cuda 2>&1 |
        tee -a "$log" | tail -10
    step_done "compiled_client_conv.py --device cuda" "${PIPESTATUS[0]}"
    timeout 50 python3 -c "import sys; from fedloom.cli._main import main
sys.exit(main(sys.argv[1:]))" run examples/fashion_mnist_cnn_iid.toml \
        --set device=cuda --set rounds=2 --out /tmp/example_run --quiet \
        2>&1 | tee -a "$log"
    step_done "fedloom run (device = cuda)" "${PIPESTATUS[0]}"
    tail -n 2 /tmp/example_run/metrics.jsonl 2>&1 | tee -a "$log"
    runners+=("${triton_runners[@]}")
fi
for runner in "${later_runners[@]}"; do  # the Triton rows only with a GPU
    [[ "$device" = cuda || "$runner" != *triton* ]] && runners+=("$runner")
done
# shellcheck disable=SC2086
timeout 230 python3 benchmarks/gpu_speed.py --device "$device" \
    ${SPEED_ARGS:---sizes 10 100 --rounds 2} --budget-s 210 --runners "${runners[@]}" \
    --json "$OUT/gpu_speed_session.json" 2>&1 | tee "$OUT/gpu_speed_session.log"
step_done "gpu_speed.py" "${PIPESTATUS[0]}"
left=$((budget - (SECONDS - started)))
if [ "$device" = cuda ] && [ "$left" -gt 60 ]; then
    timeout $((left - 10)) python3 benchmarks/gpu_profile.py --cohort 100 10 \
        --convs compiled-triton compiled --json "$OUT/gpu_profile_compiled.json" \
        2>&1 | tee -a "$log"
    step_done "gpu_profile.py --convs compiled-triton compiled" "${PIPESTATUS[0]}"
    left=$((budget - (SECONDS - started)))
fi
if [ "$left" -gt 60 ]; then
    SWEEP_ARGS="--rerun-best" bash benchmarks/mcmahan2017/gpu.sh "$left"
else
    echo "no time left for benchmarks/mcmahan2017/gpu.sh ($left s)"
fi
