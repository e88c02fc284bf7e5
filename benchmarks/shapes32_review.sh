#!/usr/bin/env bash
# The measurements of the README's built-in-models section that follow the exposure-bias review:
# delta_t as the IP authors measure it (x0_hat clipped, each model's full T = 1000 chain, the two
# models on the same images and noise with a paired interval), the unclipped blow-up at t = T for
# contrast, and Euler/Heun with and without clipping the denoised estimate (DDIM and ancestral
# always clip, as guided-diffusion does), so that the NFE-vs-FID table compares like with like.
#
#   bash benchmarks/shapes32_review.sh [OUT_DIR]        # default benchmarks/results
#
# Cost on 2 CPU cores: the full chains are 2,000 network evaluations per image per model at
# t = 100, 300, 600, 1000 -- hence 32 images. Resumable: rerunning skips finished rows and cells.
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
models=(--model shapes32-adm --model shapes32-adm-ip)
samplerkit exposure-bias "${models[@]}" --data builtin:shapes32 --mode delta --t 100,300,600,1000 \
    --num-images 32 --csv "$out/exposure-full.csv" --plot "$out/exposure-full.png" --quiet
samplerkit exposure-bias "${models[@]}" --data builtin:shapes32 --mode delta --t 1000 --no-clip-denoised \
    --num-images 8 --csv "$out/exposure-unclipped.csv" --quiet
[ -f "$out/shapes32-ref.npz" ] || samplerkit fid-ref --data builtin:shapes32 --num-images 2000 --out "$out/shapes32-ref.npz" --quiet
for m in shapes32-adm shapes32-adm-ip; do
    for clip in --clip --no-clip; do
        samplerkit sweep --model "$m" --sampler euler,heun --steps 10,50 $clip --num-images 200 \
            --ref "$out/shapes32-ref.npz" --csv "$out/sweep-clip-${m#shapes32-}.csv" --quiet
    done
done
