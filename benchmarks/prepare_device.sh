#!/usr/bin/env bash
# Once a machine, before the device calls of benchmarks/gpu_session.sh and
# benchmarks/mcmahan2017/gpu.sh: what the device lacks, in two folders git ignores.
#
#   .devdata/fashion-mnist  the Debian package's Fashion-MNIST files (the device has
#                           no network and no dataset)
#   .whl/                   wheels of pydantic and what it needs, for the device's
#                           Python 3.12 (its image lacks them), at the versions
#                           installed here
#
#   bash benchmarks/prepare_device.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    echo "install Fashion-MNIST first: apt-get install dataset-fashion-mnist" >&2
    exit 1
fi
mkdir -p .devdata
cp -r /usr/share/datasets/fashion-mnist .devdata/
rm -rf .whl
# pydantic's own needs, at the versions this machine's pydantic works with
wheels=$(python3 -c "import importlib.metadata as m
print(' '.join(f'{n}=={m.version(n)}' for n in
      ('pydantic', 'pydantic_core', 'annotated-types', 'typing-inspection',
       'typing_extensions')))")
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $wheels
ls .whl .devdata/fashion-mnist
du -sh .whl .devdata
