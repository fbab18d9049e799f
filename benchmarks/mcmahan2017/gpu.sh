#!/usr/bin/env bash
# The CNN cells on a GPU, through the device tool, one call at a time. Once, here:
#
#   mkdir -p runs/data && cp -r /usr/share/datasets/fashion-mnist runs/data/fashion_mnist
#
# and the wheels of pydantic, which the device's image lacks (pydantic,
# pydantic_core, annotated-types, typing-inspection for cp312 manylinux, downloaded
# into .whl/ as the device tool's README says; add "/.whl/" to .git/info/exclude).
#
# then each call (the device machine has no Fashion-MNIST and no network):
#
#   run(command="bash benchmarks/mcmahan2017/gpu.sh 480",
#       carry=[".whl", "runs/data", "runs/mcmahan2017/fashion_mnist/cnn"])
#
# and, on this machine, with the call's files under FILES:
#
#   cp FILES/fashion_mnist.json benchmarks/mcmahan2017/results/
#   tar -xf FILES/runs.tar -C runs/mcmahan2017
#   python -m benchmarks.mcmahan2017 table && python -m benchmarks.mcmahan2017 curves
#
# The results file travels with the working tree, so each call skips the runs
# done before; a run stopped by the budget (seconds, default 480) resumes from its
# checkpoint, which runs.tar brings back. Repeat until the sweep says it is done.
set -euo pipefail
budget="${1:-480}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
if [ -d runs/data/fashion_mnist ]; then
    export FEDLOOM_DATA="$PWD/runs/data"
fi
python3 -m benchmarks.mcmahan2017 run --model cnn --device cuda \
    --runtime vectorized --time-budget "$budget" | tee "$OUT/sweep.log"
cp benchmarks/mcmahan2017/results/fashion_mnist.json "$OUT/"
python3 -m benchmarks.mcmahan2017 pack --out "$OUT"
