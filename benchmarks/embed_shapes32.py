"""Store the EMA weights of the two shapes32 runs in the package as float16 (second step of
``shapes32_recipe.sh``): samplerkit/models/shapes32-adm{,-ip}.pt plus their flags.

    python benchmarks/embed_shapes32.py RUN_NONE RUN_IP STEP
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from samplerkit.output import atomic_file, atomic_write

MODELS = Path(__file__).resolve().parent.parent / "samplerkit" / "models"


def embed(run: Path, name: str, step: int) -> None:
    settings = json.loads((run / "settings.json").read_text())
    rate = settings["ema_rates"][0]
    state = torch.load(run / f"ema_{rate}_{step:06d}.pt", weights_only=True)
    half = {k: v.to(torch.float16) for k, v in state.items()}
    for k, v in state.items():  # float16 storage must give back the same float32 weights to within fp16 rounding
        assert torch.allclose(half[k].float(), v, rtol=1e-3, atol=1e-4), k
    MODELS.mkdir(exist_ok=True)
    with atomic_file(MODELS / f"{name}.pt") as f:  # the shipped file is either the old or the new one
        torch.save(half, f)
    atomic_write(MODELS / f"{name}.json", (run / "flags.json").read_bytes())
    print(f"{name}: step {step}, EMA {rate}, {(MODELS / f'{name}.pt').stat().st_size / 2**20:.2f} MiB")


def record_samples() -> None:
    """Reference samples of the shipped models for the reproduction test: seeds 0-3 with the
    recommended sampler (what `samplerkit sample` draws by default) and with Heun, 8 steps."""
    import numpy as np

    import samplerkit as sk
    from samplerkit.data import to_uint8
    from samplerkit.generate import generate, make_sampler
    from samplerkit.runs import resolve_sampler

    out = {}
    for name in ("shapes32-adm", "shapes32-adm-ip"):
        net = sk.load(name)
        sampler, steps, options = resolve_sampler(name, None, None, {})
        for key, prepared in ((name, make_sampler(net, sampler, steps, **options)),
                              (f"{name}/heun8", make_sampler(net, "heun", 8))):
            ((_, x, _),) = generate(net, prepared, [0, 1, 2, 3], batch_size=4)
            out[key] = to_uint8(x)
    path = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "shapes32_samples.npz"
    with atomic_file(path) as f:
        np.savez(f, **out)
    print(f"recorded {path}")


if __name__ == "__main__":
    run_none, run_ip, step = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    embed(run_none, "shapes32-adm", step)
    embed(run_ip, "shapes32-adm-ip", step)
    record_samples()
