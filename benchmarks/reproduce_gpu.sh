#!/usr/bin/env bash
# The GPU run behind docs/results.md: both comparisons and the shipped model's report, all at once on one GPU.
#
#   bash benchmarks/reproduce_gpu.sh OUT [PENDULUM_PREDICTORS] [DEADLINE_SECONDS]
#
# - reproduce pendulum: trains the five compared models (5,000 steps each, the shipped model's budget) as
#   parallel processes, then evaluates them and the noise-abduction ablation (1,000 interventions x 3 seeds);
# - evaluate the shipped (CPU-trained) Pendulum model under the same settings;
# - reproduce morphomnist likewise, at a lower priority.
# Every command is stopped at the deadline (default 480 s); what finished stays in OUT and a rerun reuses it.
set -u
out=${1:?usage: reproduce_gpu.sh OUT [PENDULUM_PREDICTORS] [DEADLINE_SECONDS]}
predictors=${2:-src/causaldiffae/pretrained/pendulum-predictors}
deadline=${3:-480}
cli=(python3 -m causaldiffae.cli)
flags=(--n 1000 --seeds 0,1,2 --steps 50 --batch-size 250 --subset 100)
mkdir -p "$out"
start=$(date +%s)

timeout "$deadline" "${cli[@]}" reproduce pendulum --out "$out/pendulum" --train-steps 5000 --jobs 6 \
    --predictors "$predictors" "${flags[@]}" > "$out/reproduce-pendulum.log" 2>&1 &
timeout "$deadline" "${cli[@]}" evaluate src/causaldiffae/pretrained/pendulum --predictors "$predictors" \
    --out "$out/pendulum/shipped/eval" "${flags[@]}" > "$out/evaluate-shipped.log" 2>&1 &
timeout "$deadline" nice -n 5 "${cli[@]}" reproduce morphomnist --out "$out/morphomnist" --train-steps 5000 \
    --jobs 6 "${flags[@]}" > "$out/reproduce-morphomnist.log" 2>&1 &
wait
echo "all done after $(( $(date +%s) - start )) s"
