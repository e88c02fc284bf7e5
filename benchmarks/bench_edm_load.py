"""EDM pickle loading benchmark: the safe loader against plain ``pickle.load`` of the same file.

Writes a full-size ``edm-cifar10-32x32-cond-vp``-shaped network pickle (EDMPrecond over
DDPM++ as EDM's train.py configures it for CIFAR-10: model_channels 128, channel_mult [2,2,2],
num_blocks 4, attn_resolutions [16], dropout 0.13, label_dim 10, augment_dim 9; random
weights) in the upstream persistence layout, then measures, each in a fresh process:

* ``plain``: ``pickle.load`` with stand-in ``torch_utils.persistence`` / ``dnnlib.util``
  modules registered (the stand-in returns the meta dict, so no pickled code runs either);
* ``safe-unpickle``: :func:`samplerkit.adapters.safe_pickle.load` alone;
* ``load_pickle``: :func:`samplerkit.adapters.edm.load_pickle`, i.e. safe unpickling plus building our
  network and assigning its parameters.

Time is the best of ``--repeats`` loads; memory is the peak resident-set growth over the
process's size before the first load. Goal: load_pickle <= 1.5x the time and <= 1.2x the
memory of plain.

    python benchmarks/bench_edm_load.py [--repeats 5] [--keep FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the upstream-layout pickle writers of test_adapter_edm

CIFAR10_COND_VP = dict(
    img_resolution=32, img_channels=3, label_dim=10, use_fp16=False, model_type="SongUNet",
    embedding_type="positional", encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
    resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2], augment_dim=9, dropout=0.13,
)


def write_pickle(path: Path) -> int:
    """The network pickle as EDM's generate-style release holds it: ``{'ema': network}``."""
    import torch
    from samplerkit.adapters import edm
    from test_adapter_edm import as_upstream, dump_upstream, recording_init_arguments

    torch.manual_seed(0)
    with recording_init_arguments():
        net = edm.EDMPrecond(**CIFAR10_COND_VP)
    dump_upstream(dict(ema=as_upstream(net)), path)
    return sum(p.numel() for p in net.parameters())


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS now, VmHWM its peak).

    VmHWM belongs to the process image, unlike ru_maxrss, which survives exec and would carry
    the parent's peak into the child.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(mode: str, path: str, repeats: int) -> dict:
    """Run in a child process: best load time and peak RSS growth of one loading method."""
    import torch  # noqa: F401  (imported before the baseline is taken, as every method needs it)
    from samplerkit.adapters import edm, safe_pickle

    if mode == "plain":
        from test_adapter_edm import upstream_module_names

        names = upstream_module_names()
        names.__enter__()
        sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj = lambda meta: meta

        def load():
            with open(path, "rb") as f:
                return pickle.load(f)
    elif mode == "safe-unpickle":
        def load():
            with open(path, "rb") as f:
                return safe_pickle.load(f)
    else:
        def load():
            return edm.load_pickle(path)

    gc.collect()
    baseline = _status_bytes("VmRSS")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        obj = load()
        times.append(time.perf_counter() - start)
        del obj
        gc.collect()
    peak = _status_bytes("VmHWM")
    return dict(seconds=min(times), peak_growth_bytes=peak - baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="write the pickle here and keep it")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.repeats)))
        return

    from _common import print_machine

    print_machine()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "edm-cifar10-32x32-cond-vp-shaped.pkl"
        n_params = write_pickle(path)
        print(f"pickle: {path.stat().st_size / 2**20:.1f} MiB, {n_params / 1e6:.2f} M parameters")
        results = {}
        for mode in ("plain", "safe-unpickle", "load_pickle"):
            out = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--child", mode, str(path)],
                                 check=True, capture_output=True, text=True).stdout
            results[mode] = json.loads(out.strip().splitlines()[-1])
    plain = results["plain"]
    print(f"{'method':<15}{'seconds':>9}{'x plain':>9}{'peak MiB':>10}{'x plain':>9}")
    for mode, r in results.items():
        print(f"{mode:<15}{r['seconds']:>9.3f}{r['seconds'] / plain['seconds']:>9.2f}"
              f"{r['peak_growth_bytes'] / 2**20:>10.1f}{r['peak_growth_bytes'] / plain['peak_growth_bytes']:>9.2f}")
    ok_time = results["load_pickle"]["seconds"] <= 1.5 * plain["seconds"]
    ok_mem = results["load_pickle"]["peak_growth_bytes"] <= 1.2 * plain["peak_growth_bytes"]
    print(f"goal load_pickle <= 1.5x time: {'met' if ok_time else 'NOT met'}; <= 1.2x memory: "
          f"{'met' if ok_mem else 'NOT met'}")


if __name__ == "__main__":
    main()
