#!/usr/bin/env bash
# The comparison over three training seeds on one GPU (DATASET=pendulum, the default, or morphomnist): `causaldiffae reproduce pendulum` trains the five
# compared models (causaldiffae, no condition dropout, DiffAE aligned and unaligned, label-conditional DDIM) once
# per training seed 0, 1, 2 (the shipped model's budget: 5,644 steps of batch 16 for Pendulum, 13,542 of batch 16 for
# MorphoMNIST, the first of its two runs: the encoder-only fine-tune is not part of the comparison), evaluates
# each run and the two noise-abduction rows (depth 1.0 as the reference code, and the evaluation depth) at the depth
# and guidance chosen on validation for the shipped model (Pendulum 0.7 / 1, MorphoMNIST 0.7 / 1) with the settings of
# docs/results.md (1,000 interventions x evaluation seeds 0,1,2, 50 DDIM steps, batch 250, subset 100), and writes
# runs/reproduce-gpu/DATASET/results.md and results.json: each row the mean ± std over its training seeds.
#
# Run it on the lent GPU machine, in the repository root:   bash scripts/gpu-reproduce.sh
# MorphoMNIST at full size (55,000 train / 5,000 val / 10,000 test digits): put the four MNIST IDX files in a folder
# and run   DATASET=morphomnist MNIST_DIR=that/folder bash scripts/gpu-reproduce.sh   (the machine fetches nothing,
# so the files must travel with the checkout); without MNIST_DIR the embedded 5,000 digits are used.
#
# Expected run time on one H200: at most about 40 minutes (an estimate from the runs behind docs/results.md, made
# with the Pendulum recipe before 2026-12-06, 5,000 steps of batch 32 with a 32-channel UNet, three times the
# training FLOPs of today's: such a training took 7.6 minutes with ten sharing the GPU, an evaluation about 4.5
# minutes with six side by side; here 15 trainings and 21 evaluations, six at a time, plus about a minute for the
# data and the predictors; not re-timed with today's recipe). That is
# more than one 10-minute device command: finished runs and evaluations in OUT_DIR are reused by a rerun on the
# same machine, and the environment variables below shrink the work (e.g. TRAIN_SEEDS=0,1 N=250 JOBS=10).
#
# Python: the .venv of `make install` where one is installed; else the machine's python3 when it already holds
# every dependency (the lent GPU machine has CUDA PyTorch and can fetch nothing), with src/ on PYTHONPATH; else
# `make install` creates .venv. Predictors are trained into OUT_DIR/predictors (current protocol: observational and
# interventional renders) unless PREDICTORS names a folder of trained ones. If $OUT is set, results.md,
# results.json and evals.tar.gz (every metrics.json and report.md, the logs) are copied there, also after a failure.
set -euo pipefail

dataset=${DATASET:-pendulum}  # or morphomnist
out_dir=${OUT_DIR:-runs/reproduce-gpu/$dataset}
train_seeds=${TRAIN_SEEDS:-0,1,2}
# each dataset's shipped model's budget and the depth and weight chosen for it on validation (its knobs.json)
case "$dataset" in
    morphomnist) steps_default=13542 depth_default=0.7 guidance_default=1 ;;
    *) steps_default=5644 depth_default=0.7 guidance_default=1 ;;
esac
train_steps=${TRAIN_STEPS:-$steps_default}
jobs=${JOBS:-6}
eval_flags=(--n "${N:-1000}" --seeds "${SEEDS:-0,1,2}" --steps 50 --batch-size 250 --subset 100
            --depth "${DEPTH:-$depth_default}" --guidance "${GUIDANCE:-$guidance_default}")

copy_back() {
    [[ -n "${OUT:-}" && -d "$out_dir" ]] || return 0
    for name in results.md results.json; do
        if [[ -f "$out_dir/$name" ]]; then cp "$out_dir/$name" "$OUT/"; fi
    done
    (cd "$out_dir" && find . \( -path '*/eval/metrics.json' -o -path '*/eval/report.md' -o -path './logs/*' \) \
        -print0 | tar --null -czf "$OUT/evals.tar.gz" --files-from=-) || true
}
trap copy_back EXIT

deps="import torch, accelerate, safetensors, numpy, PIL, yaml, tqdm, matplotlib, skimage, sklearn, scipy"
if [[ -x .venv/bin/python && -f .venv/.installed ]]; then
    python=.venv/bin/python
elif python3 -c "$deps" 2>/dev/null; then
    python=python3
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
    make install
    python=.venv/bin/python
fi
"$python" -c "import torch; print(f'torch {torch.__version__}, cuda: {torch.cuda.is_available()}')"

predictors=()
[[ -n "${PREDICTORS:-}" ]] && predictors=(--predictors "$PREDICTORS")
mkdir -p "$out_dir"
start=$(date +%s)
data=()
if [[ -n "${MNIST_DIR:-}" ]]; then
    [[ "$dataset" == morphomnist ]] || { echo "MNIST_DIR needs DATASET=morphomnist" >&2; exit 2; }
    [[ -f "$out_dir/data/labels.csv" ]] || "$python" -m causaldiffae.cli data morphomnist --mnist "$MNIST_DIR" \
        --out "$out_dir/data"
    data=(--data "$out_dir/data")
fi
PYTHONUNBUFFERED=1 "$python" -m causaldiffae.cli reproduce "$dataset" --out "$out_dir" --train-seeds "$train_seeds" \
    --train-steps "$train_steps" --jobs "$jobs" ${predictors[@]+"${predictors[@]}"} ${data[@]+"${data[@]}"} \
    "${eval_flags[@]}"
echo "reproduce finished after $(( $(date +%s) - start )) s: $out_dir/results.md"
