#!/usr/bin/env bash
# The CNN cells on a GPU, through the device tool, one call at a time. Once a
# machine, here: `bash benchmarks/prepare_device.sh` (the Fashion-MNIST files in
# .devdata/fashion-mnist, since the device has no network and no dataset, and the
# wheels of pydantic, which the device's image lacks, in .whl/; both ignored by git);
#
# then each call (SECONDS: the sweep's budget; leave a minute of the call's limit):
#
#   run(command="FEDLOOM_COMMIT=<git rev-parse --short HEAD, here> \
#                bash benchmarks/mcmahan2017/gpu.sh 500", timeout_s=600,
#       carry=[".whl", ".devdata", "runs/mcmahan2017/fashion_mnist/cnn"])
#
# (the device's copy of .git lagged behind HEAD once: the commit is passed in)
#
# and, on this machine, with the call's files under FILES:
#
#   cp FILES/fashion_mnist.json benchmarks/mcmahan2017/results/
#   cp FILES/chunk_size_*.json benchmarks/results/    # when the call measured it
#   tar -xf FILES/runs.tar -C runs/mcmahan2017
#   python -m benchmarks.mcmahan2017 table && python -m benchmarks.mcmahan2017 curves
#
# The results file travels with the working tree, so each call skips the runs done
# before; a run stopped by the budget resumes from its checkpoint, which runs.tar
# brings back. Both are rewritten in $OUT after every run, so a call cut off early
# still returns what it finished. Repeat until the sweep says it is done.
# SWEEP_ARGS adds to the sweep's arguments: SWEEP_ARGS="--rerun-best" runs again
# the best run of each CNN cell whose curve the results file lacks.
# DEVICE=cpu PROBE=1 PROBE_ARGS="--rounds 1 --chunks 10 1 --batches 10" \
#     OUT=/tmp/out bash benchmarks/mcmahan2017/gpu.sh 60      tries it without one.
set -euo pipefail
budget="${1:-500}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! python3 -c "import pydantic" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null
then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
if [ -d .devdata/fashion-mnist ]; then
    export FEDLOOM_DATA="$PWD/.devdata"
fi
device="${DEVICE:-cuda}"
# Each (algorithm, B) runs at the chunk size clearly fastest on this GPU, from
# benchmarks/chunk_size.py's report for it; measured first when none is committed
# or PROBE=1 (about a minute on an H200, taken from the sweep's budget; PROBE_ARGS
# narrows it for a dry run).
name=$(python3 -c "import re, sys, torch
d = torch.device(sys.argv[1])
n = torch.cuda.get_device_name(d) if d.type == 'cuda' else 'cpu'
print(re.sub('[^a-z0-9]+', '_', n.lower()))" "$device")
probe="benchmarks/results/chunk_size_$name.json"
if [ ! -f "$probe" ] || [ "${PROBE:-0}" = 1 ]; then
    started=$SECONDS
    # shellcheck disable=SC2086
    python3 benchmarks/chunk_size.py --device "$device" ${PROBE_ARGS:-} \
        --json "$OUT/chunk_size_$name.json" 2>&1 | tee "$OUT/chunk_size.log"
    probe="$OUT/chunk_size_$name.json"
    budget=$((budget - (SECONDS - started)))
fi
cp benchmarks/mcmahan2017/results/fashion_mnist.json "$OUT/"
# shellcheck disable=SC2086
python3 -m benchmarks.mcmahan2017 run --model cnn --device "$device" ${SWEEP_ARGS:-} \
    --runtime vectorized --time-budget "$budget" --chunk-sizes "$probe" \
    --results "$OUT/fashion_mnist.json" --out "$OUT" 2>&1 | tee "$OUT/sweep.log"
