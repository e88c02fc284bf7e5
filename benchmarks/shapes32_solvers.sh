#!/usr/bin/env bash
# The newer solvers on the built-in models, for the README's NFE-vs-FID table: the same seeds,
# reference and sample size (200 images against 2,000 data-set images) as shapes32_results.sh.
#
#   bash benchmarks/shapes32_solvers.sh [OUT_DIR]        # default benchmarks/results
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
[ -f "$out/shapes32-ref.npz" ] || samplerkit fid-ref --data builtin:shapes32 --num-images 2000 --out "$out/shapes32-ref.npz" --quiet
for m in shapes32-adm shapes32-adm-ip; do
    samplerkit sweep --model "$m" --sampler dpmpp_2m,unipc,euler_ancestral --steps 5,10,20 --num-images 200 \
        --ref "$out/shapes32-ref.npz" --csv "$out/sweep-solvers-${m#shapes32-}.csv" --quiet
done
