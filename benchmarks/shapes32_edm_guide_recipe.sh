#!/usr/bin/env bash
# Recipe of the embedded guiding model shapes32-edm-xs (autoguidance, Karras et al. 2024): a bad
# version of shapes32-edm -- the same tiny-edm recipe (benchmarks/shapes32_edm_recipe.sh, no
# regularizer) at half the channels (model_channels 16: 0.32 M parameters against 1.26 M) and an
# a 24th of the training (500 steps = 8,000 images against shapes32-edm's 12,000; an eighth of the
# 4,000-step pair it was made for), as the paper's XS guides S.
# Also trains the paper's other knob alone: the same network as shapes32-edm stopped at step 500
# (a rerun of its recipe; not shipped). Then stores the XS EMA weights in float16 inside the package.
#
#   bash benchmarks/shapes32_edm_guide_recipe.sh
#
# Resumable: rerunning continues each run from its latest checkpoint.
set -euo pipefail
runs=${RUNS:-runs}
common=(--data builtin:shapes32 --preset tiny-edm --precond edm --regularizer none --gamma 0.1 --batch-size 16
        --lr 5e-4 --warmup 500 --grad-clip 1 --ema-halflife-kimg 10 --ema-rampup-ratio 0.05 --log-interval 100
        --save-interval 250 --seed 0 --quiet --resume --iterations 500)
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 samplerkit retrain "${common[@]}" --out "$runs/shapes32-edm-xs" --flag model_channels=16 &
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 samplerkit retrain "${common[@]}" --out "$runs/shapes32-edm-none-early" &
wait
if [ "${EMBED:-1}" = 1 ]; then
    python -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from embed_shapes32 import embed; \
embed(Path('$runs/shapes32-edm-xs'), 'shapes32-edm-xs', 500)"
fi
