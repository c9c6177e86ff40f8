#!/usr/bin/env bash
# Get onnxruntime-gpu onto a lent GPU machine in as few device calls as possible (docs/benchmarks.md,
# "GPU ... stop 15"). The machine has no package index, and one call carries at most 64 MiB, the
# working tree included; the tracked tree (models, data) is about 46 MB of that.
#
#   here:    bench/gpu_lease.sh prepare   # .gpu/ortx/p00..p03: the unpacked wheel, xz'd, in 64 MB parts
#   here:    bench/gpu_lease.sh slim      # leave models, data, results and plots out of the next calls' trees
#   device:  three calls, call k carrying .gpu/ortx/p0k:  mkdir -p /tmp/ortw && cp .gpu/ortx/p0k/part /tmp/ortw/p0k
#   here:    bench/gpu_lease.sh restore   # the full tree again (only the git index and .git/info/exclude change)
#   device:  one call carrying .gpu/ortx/p03 and .gpu/deps:  bash bench/gpu_lease.sh install && \
#            bash bench/gpu_lease.sh checks     # gpu-check + model instances, about 9 minutes, into $OUT
#   device:  if time is left: bash bench/gpu_lease.sh suite   # the test suite at -n 8, GPU memory sampled
#
# The machine stays warm only about 30 s between calls: run the device calls back to back. `slim`
# changes nothing in the working tree; `restore` puts the index back as HEAD has it (stage nothing
# between the two).
set -euo pipefail
ort=${ORT_VERSION:-1.31.1}
part_bytes=64000000

case "${1:-}" in
prepare)
    cd "$(git rev-parse --show-toplevel)"
    ../shared/gpu/prepare.sh "$ort" orjson  # .gpu/dl (the wheel) and .gpu/deps (orjson: the image lacks it)
    # The suite's asyncio tests need pytest-asyncio, which the image lacks (its pytest is there).
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform any -d .gpu/deps pytest-asyncio
    work=$(mktemp -d)
    unzip -q .gpu/dl/onnxruntime_gpu-"$ort"-*.whl -d "$work"
    rm -rf .gpu/ortx && mkdir -p .gpu/ortx
    # xz takes the 256 MB wheel to about 204 MB: three full calls and a 12 MB rest for the last call.
    tar cf - -C "$work" . | xz -6 -T0 | split -b "$part_bytes" -d - .gpu/ortx/tmp.
    for f in .gpu/ortx/tmp.*; do n=${f##*.}; mkdir -p ".gpu/ortx/p$n"; mv "$f" ".gpu/ortx/p$n/part"; done
    rm -rf "$work"
    du -sh .gpu/ortx/p* .gpu/deps
    ;;
slim)
    cd "$(git rev-parse --show-toplevel)"
    cp .git/info/exclude .git/info/exclude.gpu-lease
    git rm -r -q --cached model_repository data bench/results
    git ls-files -z '*.png' | xargs -0 -r git rm -q --cached
    printf '/model_repository/\n/data/\n/bench/results/\n*.png\n' >> .git/info/exclude
    echo "tracked tree now $(git ls-files -z | xargs -0 du -bc | awk '/total$/ {s += $1} END {print s}') bytes"
    ;;
restore)
    cd "$(git rev-parse --show-toplevel)"
    git reset -q
    if [ -f .git/info/exclude.gpu-lease ]; then mv .git/info/exclude.gpu-lease .git/info/exclude; fi
    git status --short | head
    ;;
install)
    # On the device, from the repository root: then `export PYTHONPATH=/tmp/site:$PWD`.
    mkdir -p /tmp/site /tmp/ortw
    last=$(ls -d .gpu/ortx/p* | tail -1)
    cp "$last/part" "/tmp/ortw/${last##*/}"
    cat /tmp/ortw/p* | xz -d | tar x -C /tmp/site
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/deps/*.whl
    PYTHONPATH=/tmp/site python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
    ;;
checks)
    # On the device, right after `install` in the same call: the GPU figures the open issues wait for,
    # within the call's 600 s. `make gpu-check` (CUDA in use, parity, the server's figures and its GPU
    # memory when ready and after the load: the arena release), then the interleaved model-instance
    # runs that settle `model_instances`' default. Results go to $OUT (the device tool brings them back).
    export PYTHONPATH=/tmp/site:$PWD
    out=${OUT:-bench/results}
    timeout 300 make gpu-check GPU_PYTHON=python3 GPU_CHECK_ARGS="--server-workers 0 --duration 4 --warmup 1 \
        --out $out/gpu_check_lease" > "$out/gpu_check_lease.txt" 2>&1 || echo "gpu-check: exit $?"
    timeout 220 python3 -m bench.gpu_batching --single-concurrency 256 --multi-concurrency 64 --duration 4 \
        --warmup 1 --repeats 3 --variants '[{}, {"model_instances": 2}, {"model_instances": 3}]' \
        --out "$out/gpu_batching_instances_lease" > "$out/gpu_batching_instances_lease.txt" 2>&1 \
        || echo "gpu_batching: exit $?"
    tail -n 40 "$out/gpu_check_lease.txt" "$out/gpu_batching_instances_lease.txt"
    ;;
suite)
    # A second call, if the lease has the time: the suite on the GPU with 8 xdist workers (the tests of
    # tools the image lacks left out), the GPU's memory sampled every second beside it.
    export PYTHONPATH=/tmp/site:$PWD
    out=${OUT:-bench/results}
    nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 1 > "$out/suite_gpu_memory.csv" &
    sampler=$!
    timeout 540 python3 -m pytest -q -n 8 --dist loadfile tests --ignore=tests/test_kubernetes.py \
        --ignore=tests/test_deploy_static.py --ignore=tests/test_deploy_live.py \
        --ignore=tests/test_v2_tritonclient.py --ignore=tests/test_v2_codec.py \
        --ignore=tests/test_third_task.py --ignore=tests/test_fuzz.py > "$out/suite.txt" 2>&1 || echo "suite: exit $?"
    kill "$sampler"
    tail -n 30 "$out/suite.txt"
    sort -t, -k2 -n "$out/suite_gpu_memory.csv" | tail -n 1
    ;;
*)
    echo "usage: $0 prepare|slim|restore|install|checks|suite" >&2
    exit 2
    ;;
esac
