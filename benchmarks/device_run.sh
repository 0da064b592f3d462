#!/usr/bin/env bash
# The GPU checks and benchmarks of the model core in one run, for a GPU machine lent for a few
# minutes (the device tool: one call, nothing installed there beyond PyTorch, OpenCV, pytest):
#
#   1. the GPU and the versions;
#   2. the CUDA tests (tests/test_cuda.py: bfloat16 and float16 training, pinned memory, loader
#      workers, GPU against CPU verdicts, a real out-of-memory split) with the model tests;
#   3. full-width vgg16_bn fine-tuned on NEU-CLS, then on magnetic tile from it (train_eval.py's
#      recipes, evaluated on each unseen val split);
#   4. `inspector classify` throughput against the bare forward pass, vgg16_bn.
#
# Here, first:   bash benchmarks/device_run.sh prepare
#   copies ../shared/datasets into .device-data/ (git-ignored; ../shared does not travel).
# There:         bash benchmarks/device_run.sh      (the device tool: carry [".device-data"])
#   Each step has its own time limit, so one that hangs leaves time for the rest; every log and
#   result lands in $OUT (at most 8 files come back from there).
# SMOKE=1 runs the same steps tiny, on any machine, to check the script before the GPU is lent.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
DATA=.device-data

if [ "${1:-}" = prepare ]; then
    src=${INSPECTOR_DATASETS:-../shared/datasets}
    rm -rf "$DATA" && mkdir -p "$DATA" || exit 1
    cp -r "$src/neu-cls" "$src/magnetic-tile" "$DATA/" || exit 1
    du -sh "$DATA"
    exit 0
fi

OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT
export INSPECTOR_DATASETS=${INSPECTOR_DATASETS:-$ROOT/$DATA}
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    model=(--arch vgg11_bn --width 0.125 --device auto) short=(--epochs 1)
    tests_limit=600 train_limit=900 classify_limit=300 images=64
else
    model=(--arch vgg16_bn --width 1.0 --device cuda) short=()
    tests_limit=${TESTS_LIMIT:-120} train_limit=${TRAIN_LIMIT:-330}
    classify_limit=${CLASSIFY_LIMIT:-75} images=1920
fi
store=$(mktemp -d)
# Results go to $OUT, not into benchmarks/results/ (a smoke run must not overwrite figures).
export INSPECTOR_RESULTS=$OUT/results

{
    date -u
    git rev-parse HEAD 2>/dev/null
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$PY" -c 'import sys, torch, torchvision, cv2; print(sys.version.split()[0], "torch", torch.__version__, "torchvision", torchvision.__version__, "cv2", cv2.__version__, "cuda", torch.cuda.is_available())'
    nproc
} >"$OUT/env.txt" 2>&1

# 2. Tests: the CUDA ones and the model core's (no database, no service packages needed).
timeout "$tests_limit" "$PY" -m pytest -q -p no:cacheprovider -W default -rs \
    tests/test_cuda.py tests/test_devices.py tests/test_inference.py tests/test_model.py \
    >"$OUT/tests.log" 2>&1
echo "tests: exit $?" >>"$OUT/env.txt"

# 3. Fine-tuning: NEU-CLS first, then magnetic tile, whose recipe starts from the NEU-CLS model
# in the same store. NEU-CLS starts from ImageNet where torchvision's file is on the machine
# (nothing can be downloaded there), else from scratch; env.txt says which.
neu_init=scratch
"$PY" -c 'import sys; from pathlib import Path; from inspector.pretrained import find_imagenet_weights as f; f(sys.argv[1], Path("data/weights"))' \
    "${model[1]}" >/dev/null 2>&1 && neu_init=imagenet
echo "NEU-CLS init: $neu_init" >>"$OUT/env.txt"
started=$(date +%s)
deadline=$((started + train_limit))
left() { local n=$((deadline - $(date +%s))); echo $((n > 1 ? n : 1)); }
train() {
    timeout "$(left)" "$PY" benchmarks/train_eval.py "${model[@]}" "${short[@]}" \
        --store "$store" --quiet "$@" \
        >>"$OUT/train.log" 2>&1
}
train --dataset neu-cls --init "$neu_init" && train --dataset magnetic-tile
echo "train_eval: exit $? after $(($(date +%s) - started)) s" >>"$OUT/env.txt"

# 4. classify against the bare forward pass (decoding in threads, the GPU's default).
timeout "$classify_limit" "$PY" benchmarks/classify_throughput.py "${model[@]}" \
    --images "$images" --workers 8 --batch-size 64 --repeats 2 >"$OUT/classify.log" 2>&1
echo "classify_throughput: exit $?" >>"$OUT/env.txt"

# The results and each stored version's reports and figures (no weights), in one archive.
(cd "$store" && find . -name '*.json' -o -name '*.png') >"$OUT/.list"
tar czf "$OUT/results.tgz" -C "$OUT" results -C "$store" -T "$OUT/.list" 2>>"$OUT/env.txt"
rm -rf "$OUT/.list" "$OUT/results" "$store"
cat "$OUT/env.txt"
tail -n 5 "$OUT/tests.log"
grep -h '"accuracy"' "$OUT/train.log" | cut -c1-700
tail -n 2 "$OUT/classify.log" | cut -c1-600
