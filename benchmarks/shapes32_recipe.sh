#!/usr/bin/env bash
# Recipe of the embedded models shapes32-adm and shapes32-adm-ip: two ADMs with identical settings
# except the regularizer, trained on the built-in data set on a 2-core CPU (one core each, in
# parallel), then their EMA weights stored in float16 inside the package.
#
#   bash benchmarks/shapes32_recipe.sh [ITERATIONS]      # default 2000 (about 45 min per model here)
#
# Resumable: rerunning continues each run from its latest checkpoint.
set -euo pipefail
iterations=${1:-2000}
runs=${RUNS:-runs}
for reg in none ip; do
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 samplerkit retrain --data builtin:shapes32 --out "$runs/shapes32-$reg" \
        --preset tiny --regularizer "$reg" --gamma 0.1 --iterations "$iterations" --batch-size 16 --lr 2e-4 \
        --ema-rate 0.995 --save-interval 200 --log-interval 50 --seed 0 --quiet --resume &
done
wait
python benchmarks/embed_shapes32.py "$runs/shapes32-none" "$runs/shapes32-ip" "$iterations"
