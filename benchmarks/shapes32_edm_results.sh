#!/usr/bin/env bash
# NFE-vs-FID of the embedded EDM pair (shapes32-edm, shapes32-edm-ip) for the README's *Built-in models*
# table: the same seeds (0-199), sample size and reference (2,000 data-set images) as the ADM pair's
# sweeps in shapes32_results.sh / shapes32_solvers.sh, so the rows sit beside theirs. The two models
# run in parallel, one core each. Heun 18 steps (NFE 35) is the models' recommended sampler; the
# stochastic sampler uses EDM's ImageNet-64 settings (Table 5: S_churn 40, S_min 0.05, S_max 50,
# S_noise 1.003). No clipping (the samplers' default for sigma-space solvers). Then FID and KID of all four
# trained built-in models with their recommended samplers at the sweep's default step counts.
#
#   bash benchmarks/shapes32_edm_results.sh [OUT_DIR]     # default benchmarks/results; resumable
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
[ -f "$out/shapes32-ref.npz" ] || samplerkit fid-ref --data builtin:shapes32 --num-images 2000 --out "$out/shapes32-ref.npz" --quiet
sweep() {  # MODEL SAMPLER STEPS [OPTIONS...]
    local m=$1 s=$2 steps=$3
    shift 3
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 samplerkit sweep --model "$m" --sampler "$s" --steps "$steps" --num-images 200 \
        --ref "$out/shapes32-ref.npz" --csv "$out/sweep-${m#shapes32-}.csv" --quiet "$@"
}
for m in shapes32-edm shapes32-edm-ip; do
    (
        sweep "$m" heun 18,3,5,10
        sweep "$m" dpmpp_2m 5,10,20
        sweep "$m" euler 5,10,20
        sweep "$m" stochastic 18 --S-churn 40 --S-min 0.05 --S-max 50 --S-noise 1.003
        sweep "$m" euler 50
        sweep "$m" heun 25
    ) &
done
wait
# FID and KID of every built-in model with its recommended sampler (the default-model decision), against the
# same 2,000 data-set images; KID needs their Inception features (16 MiB, kept out of the repository)
ref_kid=${TMPDIR:-/tmp}/shapes32-ref-kid.npz
[ -f "$ref_kid" ] || samplerkit fid-ref --data builtin:shapes32 --num-images 2000 --metrics fid,kid --out "$ref_kid" --quiet
for pair in "shapes32-edm shapes32-adm" "shapes32-edm-ip shapes32-adm-ip"; do
    (
        for m in $pair; do
            OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 samplerkit sweep --model "$m" --num-images 200 --metrics fid,kid \
                --ref "$ref_kid" --csv "$out/kid-recommended-$m.csv" --quiet
        done
    ) &
done
wait
