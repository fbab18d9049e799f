#!/usr/bin/env bash
# The open GPU work in one device-tool call, most decisive first:
#
# 1. benchmarks/gpu_profile.py --convs cudnn triton: where a step's GPU time goes,
#    in how many launches, with cuDNN's convolutions and with
#    benchmarks/triton_client_conv.py's (Triton's rounds gained 1.3x where its
#    second convolution alone gained 7.2x: what takes the rest?);
# 2. benchmarks/gpu_speed.py, whole FedAvg rounds at cohorts 10 and 100: the
#    runtime as it is ("graphs") beside the same with its convolutions through
#    benchmarks/client_conv_op.py ("graphs triton-conv"), with only the second
#    one so ("graphs triton-conv2 flat"), and cuDNN without TF32 ("graphs
#    fp32-conv", the control for the rows' parameter differences);
# 3. benchmarks/mcmahan2017/gpu.sh --rerun-best with the seconds left: the CNN
#    cells' best runs recorded before the results file kept their accuracy by
#    round (the IID ones), made again for their curves (what it needs, .whl/ and
#    .devdata/, both ignored by git: `bash benchmarks/prepare_device.sh` once a
#    machine). Every cell of Table 2 has been run.
#
#   run(command="FEDLOOM_COMMIT=<git rev-parse --short HEAD, here> \
#                bash benchmarks/gpu_session.sh 560", timeout_s=590, kind="nvidia-h200",
#       carry=[".whl", ".devdata", "runs/mcmahan2017/fashion_mnist/cnn"])
#
# (nvidia-h200: the GPU of the earlier CNN rows and of benchmarks/results'
# chunk_size_nvidia_h200.json). Then here, with the call's files under FILES:
#
#   cp FILES/gpu_profile.json FILES/gpu_speed_triton.json benchmarks/results/
#   and what benchmarks/mcmahan2017/gpu.sh says for the rest.
#
# A dry run without a GPU (step 1 needs one; the Triton rows are left out):
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
device="${DEVICE:-cuda}"
if [ "$device" = cuda ]; then
    timeout 150 python3 benchmarks/gpu_profile.py --cohort 10 100 \
        --convs cudnn triton --json "$OUT/gpu_profile.json" \
        2>&1 | tee "$OUT/gpu_profile.log"
fi
# shellcheck disable=SC2086
timeout 200 python3 benchmarks/gpu_speed.py --device "$device" \
    ${SPEED_ARGS:---sizes 10 100 --rounds 3} --budget-s 170 \
    --runners graphs "graphs triton-conv" "graphs triton-conv2 flat" \
    "graphs fp32-conv" \
    --json "$OUT/gpu_speed_triton.json" \
    2>&1 | tee "$OUT/gpu_speed_triton.log"
left=$((budget - (SECONDS - started)))
if [ "$left" -gt 60 ]; then
    SWEEP_ARGS="--rerun-best" bash benchmarks/mcmahan2017/gpu.sh "$left"
else
    echo "no time left for benchmarks/mcmahan2017/gpu.sh ($left s)"
fi
