#!/usr/bin/env bash
# The exposure-bias remedies without retraining on the built-in shapes32-adm, for the README:
# Epsilon Scaling (Ning et al. 2024) and the Time-Shift sampler (Li et al. 2024, Alg. 3's window on
# both sides of t), each chosen on held-out seeds and measured against the plain sampler on the
# evaluation seeds with paired bootstrap intervals (FID and KID, same seeds and noise). Ancestral
# sampler with learned variance, x0 clipped, 20 and 100 respaced steps.
#
#   bash benchmarks/shapes32_remedies.sh [OUT_DIR]          # default benchmarks/results
#
# Selection seeds 1000-1099 (100 images), evaluation seeds 0-199 (200 images); the choice is the
# lowest FID on the selection seeds, plain included (lambda = 1 / no shift can win); nothing is
# tuned on the evaluation images. Reference: the first 2,000 images of builtin:shapes32 with pool
# features (FID and KID).
#   Epsilon Scaling: lambda = b, b in {1.0, 1.001, 1.002, 1.003, 1.005} at 20 steps; the linear
#     schedule lambda(t) = 1 + k t (t = step index, 0 = last step) from 1 at the last step to 1.004
#     at the first (mean 1.002, the middle of the grid), run once on the selection seeds, not chosen
#     from; the same at 100 steps.
#   Time-Shift: (window, cutoff) in {40/300, 80/300, 120/300, 80/200} at 20 and 100 steps (cutoff
#     200 with window 80 only, for time).
# CSVs: remedies2-{es,ts}-{select,eval}.csv. The earlier recipe (lambda grid 1.0/1.005/1.01,
# Time-Shift 80/300 untuned, delta_t at t = T: remedies-*.csv) is in the git history.
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
ref="$out/shapes32-ref-kid.npz"
[ -f "$ref" ] || samplerkit fid-ref --data builtin:shapes32 --num-images 2000 --metrics fid,kid --out "$ref" --quiet
run=(python "$(dirname "$0")/remedies_shapes32.py" --ref "$ref" --prefix "$out/remedies2")
for steps in 20 100; do
    "${run[@]}" --phase es-select --steps $steps --es-grid 1.0,1.001,1.002,1.003,1.005 --es-linear-top 1.004
    "${run[@]}" --phase ts-select --steps $steps --ts-grid 40/300,80/300,120/300,80/200
done
# the evaluation seeds: the choice of each step count against the plain sampler (when the
# selection picks the plain sampler, only the plain row is computed)
"${run[@]}" --phase es-eval --steps 20,100
"${run[@]}" --phase ts-eval --steps 20,100
