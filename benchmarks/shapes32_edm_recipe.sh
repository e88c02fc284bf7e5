#!/usr/bin/env bash
# Recipe of the embedded models shapes32-edm and shapes32-edm-ip: two EDM-preconditioned DDPM++ networks
# (preset tiny-edm, Karras et al. 2022) with identical settings except the regularizer (none / input
# perturbation, gamma 0.1), trained on the built-in data set on a 2-core CPU (one core each, in
# parallel), then their EMA weights stored in float16 inside the package.
#
#   bash benchmarks/shapes32_edm_recipe.sh ITERATIONS
#
# The shipped pair: ITERATIONS 12000 (the ADM pair's step count), about 14,300 s of training per model on the
# shared 2-core machine over several invocations, each resumed from the last checkpoint
# (benchmarks/results/shapes32-edm*-wall_time.txt). The step count only decides where a run
# stops (constant learning rate after warm-up, EMA by half-life), so a run resumed with a larger count is
# the longer run. Resumable: rerunning continues each run from its latest checkpoint. Every
# setting is spelled out so that the recipe stays what benchmarks/results/shapes32-edm*-settings.json
# recorded whatever the preset becomes.
set -euo pipefail
iterations=${1:?usage: shapes32_edm_recipe.sh ITERATIONS}
runs=${RUNS:-runs}
for reg in none ip; do
    (
        start=$SECONDS
        OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 samplerkit retrain --data builtin:shapes32 --out "$runs/shapes32-edm-$reg" \
            --preset tiny-edm --precond edm --regularizer "$reg" --gamma 0.1 --iterations "$iterations" \
            --batch-size 16 --lr 5e-4 --warmup 500 --grad-clip 1 --ema-halflife-kimg 10 --ema-rampup-ratio 0.05 \
            --save-interval 500 --log-interval 100 --seed 0 --quiet --resume
        echo "$(date -u +%FT%TZ) reached step $iterations; this invocation took $((SECONDS - start)) s" \
            >> "$runs/shapes32-edm-$reg/wall_time.txt"
    ) &
done
wait
if [ "${EMBED:-1}" = 1 ]; then
    python "$(dirname "$0")/embed_shapes32.py" "$runs/shapes32-edm-none" "$runs/shapes32-edm-ip" "$iterations"
fi
