"""Store the EMA weights of a pair of shapes32 runs in the package as float16 (the last step of
``shapes32_recipe.sh`` and ``shapes32_edm_recipe.sh``): samplerkit/models/NAME.pt plus its flags
(for EDM runs the preconditioner's class and constructor arguments), the runs' settings, loss logs
and wall times in benchmarks/results, and reference samples for tests/test_shipped_models.py.

    python benchmarks/embed_shapes32.py RUN_NONE RUN_IP STEP

The family follows from the runs' settings.json: ``precond`` edm|vp|ve gives shapes32-edm{,-ip}
(EMA by half-life), none (an ADM run) gives shapes32-adm{,-ip} (EMA by rate).
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


def family(run: Path) -> str:
    """'edm' for an EDM-preconditioned run (retrain --precond edm|vp|ve), else 'adm'."""
    return "edm" if json.loads((run / "settings.json").read_text()).get("precond", "adm") != "adm" else "adm"


def embed(run: Path, name: str, step: int) -> None:
    settings = json.loads((run / "settings.json").read_text())
    if settings.get("ema_halflife_kimg"):
        key = f"{settings['ema_halflife_kimg']:g}kimg"
    else:
        key = f"{settings['ema_rates'][0]}"
    state = torch.load(run / f"ema_{key}_{step:06d}.pt", weights_only=True)
    half = {k: v.to(torch.float16) for k, v in state.items()}
    for k, v in state.items():  # float16 storage must give back the same float32 weights to within fp16 rounding
        assert torch.allclose(half[k].float(), v, rtol=1e-3, atol=1e-4), k
    MODELS.mkdir(exist_ok=True)
    with atomic_file(MODELS / f"{name}.pt") as f:  # the shipped file is either the old or the new one
        torch.save(half, f)
    atomic_write(MODELS / f"{name}.json", (run / "flags.json").read_bytes())
    for src in ("settings.json", "log.csv", "wall_time.txt"):
        if (run / src).is_file():
            shutil.copyfile(run / src, RESULTS / f"{name}-{src}")
    print(f"{name}: step {step}, EMA {key}, {(MODELS / f'{name}.pt').stat().st_size / 2**20:.2f} MiB")


def record_samples(names: tuple[str, str], fixture: str) -> None:
    """Reference samples of the shipped models for the reproduction test: seeds 0-3 with the
    recommended sampler (what `samplerkit sample` draws by default) and with Heun, 8 steps."""
    import numpy as np

    import samplerkit as sk
    from samplerkit.data import to_uint8
    from samplerkit.generate import generate, make_sampler
    from samplerkit.runs import resolve_sampler

    out = {}
    for name in names:
        net = sk.load(name)
        sampler, steps, options = resolve_sampler(name, None, None, {})
        for key, prepared in ((name, make_sampler(net, sampler, steps, **options)),
                              (f"{name}/heun8", make_sampler(net, "heun", 8))):
            ((_, x, _),) = generate(net, prepared, [0, 1, 2, 3], batch_size=4)
            out[key] = to_uint8(x)
    path = ROOT / "tests" / "fixtures" / fixture
    with atomic_file(path) as f:
        np.savez(f, **out)
    print(f"recorded {path}")


if __name__ == "__main__":
    run_none, run_ip, step = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    kind = family(run_none)
    assert family(run_ip) == kind, "the two runs of a pair must be of one family"
    names = (f"shapes32-{kind}", f"shapes32-{kind}-ip")
    embed(run_none, names[0], step)
    embed(run_ip, names[1], step)
    record_samples(names, "shapes32_samples.npz" if kind == "adm" else "shapes32_edm_samples.npz")
