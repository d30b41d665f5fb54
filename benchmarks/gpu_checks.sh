#!/usr/bin/env bash
# The GPU checks of issues 14 and 15, prepared to run in one go on a lent GPU (the `device` tool: 15
# minutes of device time in all, 10 a command, nothing reachable from the machine, its python3 holds a
# CUDA PyTorch but not kornia/pydantic/pooch, so those travel as wheels).
#
# Here, once (no GPU needed):
#   AIRBENCH=PATH/airbench94_muon.py bash benchmarks/gpu_checks.sh prepare
#     -> .device/ (the shared JPEGs, airbench's script if AIRBENCH is given) and .whl/ (wheels), both ignored
# There, in two calls that carry [".device", ".whl"]:
#   bash benchmarks/gpu_checks.sh run tests speedrun airbench      (timeout_s 590)
#   bash benchmarks/gpu_checks.sh run seeds                        (what is left: cifarnet, vgg-arch13, expert-net)
# Everything lands in $OUT: the logs, speedrun.jsonl (one line a run, as benchmarks/speedrun.py writes here).
set -uo pipefail
cd "$(dirname "$0")/.."
DEV=.device
WHEELS="kornia==0.9.0 kornia_rs==0.2.0 pydantic==2.13.4 pydantic_core==2.46.4 annotated_types==0.7.0
typing_inspection==0.4.2 pooch==1.9.0 platformdirs==4.14.9 typer==0.29.2"  # the lab's needs the GPU image lacks

prepare() {
    mkdir -p "$DEV" .whl
    cp ../shared/data/cifar10-jpeg/train.tar.gz "$DEV/" || { echo "no ../shared: nothing to carry"; exit 2; }
    if [ -n "${AIRBENCH:-}" ]; then cp "$AIRBENCH" "$DEV/airbench94_muon.py"; fi
    # the GPU image runs Python 3.12 on x86-64 manylinux
    # shellcheck disable=SC2086
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $WHEELS || exit 1
    du -sh "$DEV" .whl
}

run() {
    OUT=${OUT:-/tmp/gpu-checks}
    mkdir -p "$OUT"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
    python3 -c "import torch, cifarlab; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/env.txt"
    local before; before=$(wc -l < benchmarks/results/speedrun.jsonl)  # the lines this run adds go back
    for step in "$@"; do
        echo "== $step $(date -Is)"
        case $step in
        tests)  # the CUDA paths: every precision, GPU checkpoint on the CPU, Muon + GradScaler, compile, resume
            timeout 240 python3 -m pytest -q -n 0 -p no:cacheprovider tests/test_cuda.py \
                "tests/test_fastpath.py::test_gpu_speedrun_recipe_with_compile_matches_eager[cuda]" 2>&1 | tee "$OUT/tests.log" ;;
        speedrun)  # issue 14: speedrun-gpu, n = 5 (torch.compile's cache makes seeds 1-4 start faster)
            for seed in 0 1 2 3 4; do
                timeout 150 python3 benchmarks/speedrun.py --recipe speedrun-gpu --data "$DEV/train.tar.gz" \
                    --set train.seed=$seed | tail -3
            done 2>&1 | tee "$OUT/speedrun.log" ;;
        airbench)  # issue 14: airbench94_muon's own script on the same GPU and the same split, 5 runs after its warm-up
            if [ -f "$DEV/airbench94_muon.py" ]; then
                python3 benchmarks/airbench_data.py --data "folder:$DEV/train.tar.gz" --out "$DEV/airbench/cifar10"
                sed 's/for run in range(200)/for run in range(5)/' "$DEV/airbench94_muon.py" > "$DEV/airbench/run.py"
                (cd "$DEV/airbench" && timeout 300 python3 run.py) 2>&1 | tee "$OUT/airbench.log"
            else
                echo "no $DEV/airbench94_muon.py: prepare with AIRBENCH=PATH" | tee "$OUT/airbench.log"
            fi ;;
        seeds)  # issue 15: each seed recipe once, capped so that all three fit (SEED_MINUTES each, default 1.2)
            for recipe in cifarnet vgg-arch13 expert-net; do
                timeout 200 python3 benchmarks/speedrun.py --recipe $recipe --data "$DEV/train.tar.gz" \
                    --set train.time_limit_minutes="${SEED_MINUTES:-1.2}" | tail -3
            done 2>&1 | tee "$OUT/seeds.log" ;;
        *) echo "unknown step '$step': use tests, speedrun, airbench or seeds"; exit 2 ;;
        esac
    done
    tail -n +$((before + 1)) benchmarks/results/speedrun.jsonl > "$OUT/speedrun.jsonl"
}

case "${1:-}" in
prepare) prepare ;;
run) shift; run "$@" ;;
*) echo "usage: bash benchmarks/gpu_checks.sh prepare | run STEP... (tests speedrun airbench seeds)"; exit 2 ;;
esac
