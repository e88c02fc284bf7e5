#!/usr/bin/env bash
# The exposure-bias remedies without retraining on the built-in shapes32-adm, for the README:
# Epsilon Scaling (Ning et al. 2024) and the Time-Shift sampler (Li et al. 2024, Alg. 3's window on
# both sides of t), each chosen on held-out seeds and measured against the plain sampler on the
# evaluation seeds with paired bootstrap intervals (FID and KID, same seeds and noise). Ancestral
# sampler with learned variance, x0 clipped, 20 and 100 respaced steps.
#
#   bash benchmarks/shapes32_remedies.sh [OUT_DIR]          # default benchmarks/results
#   FULL=1 bash benchmarks/shapes32_remedies.sh [OUT_DIR]   # the full grids at 100 steps too
#
# Selection seeds 1000-1099 (100 images), evaluation seeds 0-199 (200 images); the choice is the
# lowest FID on the selection seeds, plain included (lambda = 1 / no shift can win); nothing is
# tuned on the evaluation images. Reference: the first 2,000 images of builtin:shapes32 with pool
# features (FID and KID).
#   Epsilon Scaling: lambda = b, b in {1.0, 1.001, 1.002, 1.003, 1.005} at 20 steps; the linear
#     schedule lambda(t) = 1 + k t (t = step index, 0 = last step) from 1 at the last step to 1.004
#     at the first (mean 1.002, the middle of the grid), run once on the selection seeds, not chosen
#     from. At 100 steps b in {1.0, 1.001, 1.002} (FULL=1: the 20-step grid and the linear schedule).
#   Time-Shift: (window, cutoff) in {40/300, 80/300, 120/300, 80/200} at 20 steps; at 100 steps
#     {40/300, 80/300} (FULL=1: the same four).
# The grids at 100 steps are cut to what one loaded 2-core machine ran in the time it had (a
# 100-image, 100-step cell took about 11 minutes there).
# CSVs: remedies2-{es,ts}-{select,eval}.csv. The earlier recipe (lambda grid 1.0/1.005/1.01,
# Time-Shift 80/300 untuned, delta_t at t = T: remedies-*.csv) is in the git history.
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
ref="$out/shapes32-ref-kid.npz"
[ -f "$ref" ] || samplerkit fid-ref --data builtin:shapes32 --num-images 2000 --metrics fid,kid --out "$ref" --quiet
run=(python "$(dirname "$0")/remedies_shapes32.py" --ref "$ref" --prefix "$out/remedies2")
if [ -n "${FULL:-}" ]; then
    es100=(--es-grid 1.0,1.001,1.002,1.003,1.005); ts100=40/300,80/300,120/300,80/200
else
    es100=(--es-grid 1.0,1.001,1.002 --es-linear-top 0); ts100=40/300,80/300
fi
"${run[@]}" --phase es-select --steps 20 --es-grid 1.0,1.001,1.002,1.003,1.005 --es-linear-top 1.004
"${run[@]}" --phase ts-select --steps 20 --ts-grid 40/300,80/300,120/300,80/200
# the evaluation seeds: the choice of each step count against the plain sampler (when the
# selection picks the plain sampler, only the plain row is computed)
"${run[@]}" --phase es-eval --steps 20
"${run[@]}" --phase ts-eval --steps 20
"${run[@]}" --phase es-select --steps 100 "${es100[@]}"
"${run[@]}" --phase ts-select --steps 100 --ts-grid "$ts100"
"${run[@]}" --phase es-eval --steps 100
"${run[@]}" --phase ts-eval --steps 100
