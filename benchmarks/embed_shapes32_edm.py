"""Store the EMA weights of the two shapes32 EDM runs in the package as float16 (second step of
``shapes32_edm_recipe.sh``): samplerkit/models/shapes32-edm{,-ip}.pt plus their flags (family edm:
the preconditioner's class and constructor arguments), and the runs' settings, logs and wall times
in benchmarks/results.

    python benchmarks/embed_shapes32_edm.py RUN_NONE RUN_IP STEP
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from samplerkit.output import atomic_file, atomic_write

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "samplerkit" / "models"
RESULTS = ROOT / "benchmarks" / "results"


def embed(run: Path, name: str, step: int) -> None:
    settings = json.loads((run / "settings.json").read_text())
    key = f"{settings['ema_halflife_kimg']:g}kimg"
    state = torch.load(run / f"ema_{key}_{step:06d}.pt", weights_only=True)
    half = {k: v.to(torch.float16) for k, v in state.items()}
    for k, v in state.items():  # float16 storage must give back the same float32 weights to within fp16 rounding
        assert torch.allclose(half[k].float(), v, rtol=1e-3, atol=1e-4), k
    MODELS.mkdir(exist_ok=True)
    with atomic_file(MODELS / f"{name}.pt") as f:  # the shipped file is either the old or the new one
        torch.save(half, f)
    atomic_write(MODELS / f"{name}.json", (run / "flags.json").read_bytes())
    for src, dst in (("settings.json", "settings.json"), ("log.csv", "log.csv"), ("wall_time.txt", "wall_time.txt")):
        if (run / src).is_file():
            shutil.copyfile(run / src, RESULTS / f"{name}-{dst}")
    print(f"{name}: step {step}, EMA half-life {key}, {(MODELS / f'{name}.pt').stat().st_size / 2**20:.2f} MiB")


def record_samples() -> None:
    """Reference samples of the shipped models for the reproduction test: seeds 0-3 with the
    recommended sampler (Heun, 18 steps) and with Heun, 8 steps."""
    import numpy as np

    import samplerkit as sk
    from samplerkit.data import to_uint8
    from samplerkit.generate import generate, make_sampler
    from samplerkit.runs import resolve_sampler

    out = {}
    for name in ("shapes32-edm", "shapes32-edm-ip"):
        net = sk.load(name)
        sampler, steps, options = resolve_sampler(name, None, None, {})
        for key, prepared in ((name, make_sampler(net, sampler, steps, **options)),
                              (f"{name}/heun8", make_sampler(net, "heun", 8))):
            ((_, x, _),) = generate(net, prepared, [0, 1, 2, 3], batch_size=4)
            out[key] = to_uint8(x)
    path = ROOT / "tests" / "fixtures" / "shapes32_edm_samples.npz"
    with atomic_file(path) as f:
        np.savez(f, **out)
    print(f"recorded {path}")


if __name__ == "__main__":
    run_none, run_ip, step = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    embed(run_none, "shapes32-edm", step)
    embed(run_ip, "shapes32-edm-ip", step)
    record_samples()
