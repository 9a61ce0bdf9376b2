#!/usr/bin/env bash
# The prepared GPU job: train zoo entries to (a time-budgeted share of) their full recipes on a
# lent GPU machine, in stages that fit its limits (10 min and 64 MiB per command, a machine kept
# warm between commands, ignored files kept there while it is). See scripts/gpu/README.md.
#
#   zoo_train.sh info                 versions and the GPU
#   zoo_train.sh start NAME BUDGET [OVERRIDES...]
#                                     train zoo entry NAME in the background (setsid: it outlives
#                                     the command) for at most BUDGET seconds; resumes runs/gpu/NAME
#   zoo_train.sh unpack DATASET       .gpu/DATASET/ parts -> .gpu/data/DATASET.npz (sha256 checked)
#   zoo_train.sh checks               CUDA tests + accountant / training-step / proved-bound benchmarks -> $OUT
#   zoo_train.sh collect DEADLINE NAME...
#                                     wait until the runs finish or DEADLINE (epoch seconds), then
#                                     pack each run (final/, metrics, config, log) into $OUT
#
# Runs on the CPU too (DEVICE=cpu, TRAIN_ARGS="--max-steps 2"), which is how it is tested before a
# GPU is spent on it.
set -uo pipefail
SRC="$(cd "$(dirname "$0")/../.." && pwd)"        # the lipzoo source this script belongs to
ROOT="${GPU_ROOT:-$PWD}"                          # where .gpu/ (data) and runs/ live
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEVICE="${DEVICE:-cuda}"
DATA="$ROOT/.gpu/data"
RUNS="$ROOT/runs/gpu"
OUT="${OUT:-$ROOT/gpu-out}"
PY="${PYTHON:-python3}"
mkdir -p "$DATA" "$RUNS" "$OUT"

stage="${1:?usage: zoo_train.sh info|start|unpack|checks|collect ...}"
shift
case "$stage" in
info)
    "$PY" - <<'PY'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
import lipzoo, timm, safetensors, huggingface_hub
print("lipzoo", lipzoo.__version__, "| timm", timm.__version__, "| safetensors", safetensors.__version__,
      "| huggingface_hub", huggingface_hub.__version__)
PY
    ;;
unpack)
    name="${1:?dataset}"
    [ -f "$DATA/$name.npz" ] || "$PY" "$SRC/scripts/gpu/pack_data.py" unpack "$ROOT/.gpu/$name" "$DATA/$name.npz"
    ;;
start)
    name="${1:?zoo entry}"; budget="${2:?seconds}"; shift 2
    run="$RUNS/$name"
    resume=()
    [ -f "$run/checkpoint.pt" ] && resume=(--resume)
    mkdir -p "$run"
    setsid nohup "$PY" -m lipzoo.cli -v train "$name" "$@" --data-root "$DATA" --out "$run" --device "$DEVICE" \
        --no-progress --time-budget "$budget" "${resume[@]}" ${TRAIN_ARGS:-} >>"$run/train.log" 2>&1 < /dev/null &
    echo "started $name (budget ${budget}s${resume:+, resumed}) pid $!"
    ;;
checks)
    # issue 12's GPU figures, most important first; each part writes its own file under $OUT as it goes,
    # so a part that runs out of time leaves the others. CHECK_PARTS picks the parts (default all four),
    # CHECK_MODELS / GUARANTEE_MODELS / GUARANTEE_BUDGET (one or more budgets) what they run, GUARANTEE_ARGS
    # more flags of bench/guarantee_paths.py (defaults sized for one ~8-minute command on an H100).
    cd "$SRC"
    parts=" ${CHECK_PARTS:-tests accountant train guarantee} "
    models="${CHECK_MODELS:-4c3f 6c2f 8c2f}"
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
    [[ $parts == *" tests "* ]] && timeout "${TESTS_TIMEOUT:-150}" "$PY" -m pytest -q -p no:cacheprovider -m gpu \
        tests/test_cuda.py tests/test_bounds.py tests/test_cli.py 2>&1 | tail -25 | tee "$OUT/cuda_tests.txt"
    [[ $parts == *" accountant "* ]] && timeout 120 "$PY" bench/accountant.py --device "$DEVICE" --repeats 20 \
        --models $models --max-iter 300 2>&1 | grep -v "^USDT\|^ERROR:.*DeviceProperties" | tee "$OUT/accountant.txt"
    [[ $parts == *" train "* ]] && timeout 120 "$PY" bench/train_step.py --device "$DEVICE" --repeats 20 \
        --models $models 2>&1 | tee "$OUT/train_step.txt"
    [[ $parts == *" guarantee "* ]] && LIPZOO_CACHE=off timeout "${GUARANTEE_TIMEOUT:-300}" "$PY" bench/guarantee_paths.py \
        --device "$DEVICE" --models ${GUARANTEE_MODELS:-4c3f 6c2f crm-mnist-4c3f crm-cifar10-6c2f lt-res-s 8c2f} \
        --budget ${GUARANTEE_BUDGET:-60} --max-iter 400 --debug-log "$OUT/guarantee_debug.log" ${GUARANTEE_ARGS:-} 2>&1 \
        | tee "$OUT/guarantee.txt"
    true
    ;;
collect)
    deadline="${1:?epoch seconds}"; shift
    while [ "$(date +%s)" -lt "$deadline" ]; do
        done_all=1
        for name in "$@"; do [ -d "$RUNS/$name/final" ] || done_all=0; done
        [ "$done_all" = 1 ] && break
        sleep 5
    done
    for name in "$@"; do
        run="$RUNS/$name"
        tail -3 "$run/train.log"
        files=(metrics.jsonl config.yaml train.log)
        [ -d "$run/final" ] && files+=(final)
        # the resume state travels back too when it fits (a later session can continue the run)
        [ -f "$run/checkpoint.pt" ] && [ "$(stat -c %s "$run/checkpoint.pt")" -lt 14000000 ] && files+=(checkpoint.pt)
        tar -czf "$OUT/$name.tar.gz" -C "$run" "${files[@]}" 2>/dev/null
        ls -la "$OUT/$name.tar.gz"
    done
    ;;
*)
    echo "unknown stage $stage" >&2; exit 2 ;;
esac
