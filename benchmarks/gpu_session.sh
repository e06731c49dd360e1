#!/usr/bin/env bash
# The fast path's GPU figures as one prepared call on a lent GPU machine, and its dry run on this CPU first.
#
#   bash benchmarks/gpu_session.sh fetch      # here: the wheels the GPU machine lacks, into .whl/ (never torch)
#   bash benchmarks/gpu_session.sh dry-run    # here: the device run at tiny sizes on this CPU, in a Python that
#                                             # sees only the GPU machine's packages plus those wheels
#   device tool:  run(command="bash benchmarks/gpu_session.sh device", carry=[".whl"], timeout_s=590)
#                 (FAMILIES=sdxl for a second call when the first one spent its time on Kontext)
#
# The device run measures `benchmarks/roofline.py` on full-size random pipelines (weights/full_size.py), Kontext
# first (the issue's headline target: 1024² edit + ref, 28 steps, ≤ 8.0 s bf16 and ≤ 4.5 s fp8 on an H100), then
# SDXL img2img 1024² at batch 1, 4 and 8. Profiles run in the order plain, attention, fp8, cache, compile (compile
# last: it is the slowest to set up, and a run stopped at its limit keeps every profile before it). It writes
# $OUT/<gpu>/roofline.json after every profile, plus $OUT/log and $OUT/env.txt; copy them into
# benchmarks/results/<gpu>/ when they come back, with the command and the device's versions (env.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the GPU machine lacks (/work/.library/device/KINDS.md lists what it has: torch 2.11, transformers, pillow,
# numpy, safetensors, huggingface-hub, httpx, tqdm, ...). diffusers as this project pins it; torchao's release
# built for torch 2.11; pydantic for the acceleration config.
# gguf: demo builds (which full-size builds start from) write the GGUF demo variants.
CARRY=(diffusers==0.42.1 importlib-metadata==10.2.0 torchao==0.18.0 pydantic==2.13.4 pydantic-core==2.46.4
       annotated-types==0.7.0 typing-inspection==0.4.2 gguf==0.19.0)
# Packages the GPU machine has (KINDS.md's list, those this project's benchmark path can touch): the dry run's
# Python sees only these, from this machine's installs.
DEVICE_HAS=(torch transformers tokenizers safetensors huggingface-hub hf-xet numpy pillow tqdm httpx httpcore h11
            anyio idna certifi filelock fsspec packaging pyyaml regex requests urllib3 charset-normalizer
            typing-extensions zipp jinja2 markupsafe sympy mpmath networkx psutil accelerate sentencepiece protobuf
            click rich typer shellingham markdown-it-py mdurl pygments annotated-doc triton)
FAMILIES="${FAMILIES:-flux-kontext,sdxl}"
PROFILES="${PROFILES:-plain,attention,fp8,cache,compile}"

fetch() {  # fetch DIR PYTHON_VERSION
    local dir="$1" py="$2"
    mkdir -p "$dir"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "${CARRY[@]}"
    du -sh "$dir"
}

measure() {  # measure PYTHON OUT [roofline args...]: install the carried wheels beside the device's packages, run
    local py="$1" out="$2" site="$3"; shift 3
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$WHEELS"/*.whl
    export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
    mkdir -p "$out"
    {
        "$py" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")'
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null || true
        # Fail here, in seconds, if a carried package does not import (not after the weights are built).
        "$py" -c 'import diffusers, pydantic, gguf; from pipelines.acceleration import fp8_config; fp8_config()
print("diffusers", diffusers.__version__, "pydantic", pydantic.__version__, "torchao fp8 config ok, gguf ok")'
    } 2>&1 | tee "$out/env.txt"
    "$py" -m benchmarks.roofline --families "$FAMILIES" --profiles "$PROFILES" --results-dir "$out" "$@" 2>&1 \
        | tee "$out/log"
}

case "${1:-}" in
    fetch)
        fetch .whl 3.12
        ;;
    device)
        WHEELS=.whl measure python3 "${OUT:?the device tool sets OUT}" /tmp/site
        ;;
    dry-run)
        work="${DRY_RUN_DIR:-/tmp/darkroom-gpu-dry-run}"
        rm -rf "$work" && mkdir -p "$work"
        fetch "$work/whl" "$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        python3 -m venv --without-pip "$work/venv"
        python3 benchmarks/device_packages.py "$work/device-site" "${DEVICE_HAS[@]}"
        "$work/venv/bin/python" -c 'import site; print(site.getsitepackages()[0])' \
            | xargs -I{} sh -c "echo '$work/device-site' > {}/device.pth"
        WHEELS="$work/whl" measure "$work/venv/bin/python" "$work/out" "$work/site" --tiny --reps 1
        ls -R "$work/out"
        ;;
    *)
        echo "usage: $0 fetch | dry-run | device" >&2
        exit 2
        ;;
esac
