#!/usr/bin/env bash
# Gangs' speed-ups (one job over k = 1, 2, 4, 8 GPUs) as one prepared call on a lent multi-GPU machine, and its dry
# run on this CPU first.
#
#   bash benchmarks/gpu_session.sh fetch    # here: the wheels the GPU machine lacks, into .whl/ (never torch)
#   bash benchmarks/gpu_gang.sh dry-run     # here: the same measurement at tiny sizes, gloo ranks on this CPU
#   device tool:  run(command="bash benchmarks/gpu_gang.sh device", carry=[".whl"], timeout_s=590)
#                 (on a machine with several GPUs; FAMILIES=wan2.2-ti2v-5b for a second call if the first ran out)
#
# The device run builds full-size random FLUX.1 Kontext and Wan 2.2 TI2V-5B weights on cuda:0 (weights/full_size.py)
# and times FLUX.1 Kontext 1024² (28 steps) and Wan 720p (1280x704, 81 frames, 20 steps) at every k up to the GPU
# count (benchmarks/gang_bench.py), writing $OUT/<gpu>/gang.json after each k, plus $OUT/env.txt. Copy them into
# benchmarks/results/<gpu>/ and the measured speed-ups into configs/parallel.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
FAMILIES="${FAMILIES:-flux-kontext,wan2.2-ti2v-5b}"
GPUS="${GPUS:-1,2,4,8}"

case "${1:-}" in
    device)
        out="${OUT:?the device tool sets OUT}"
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
        gpu="$(python3 -c 'import torch; print(torch.cuda.get_device_name(0).replace(" ", "-"))')"
        mkdir -p "$out/$gpu"
        { nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv; nvidia-smi topo -m; } \
            > "$out/env.txt" 2>&1 || true
        python3 -m benchmarks.gang_bench --families "$FAMILIES" --gpus "$GPUS" --results-dir "$out/$gpu" 2>&1 \
            | tee "$out/log"
        ;;
    dry-run)
        python3 -m benchmarks.gang_bench --tiny --families "$FAMILIES" --gpus 1,2 --reps 1 \
            --results-dir "${DRY_RUN_DIR:-/tmp/darkroom-gang-dry-run}"
        ;;
    *)
        echo "usage: $0 dry-run | device" >&2
        exit 2
        ;;
esac
