"""End-to-end images/s of ``samplerkit sample`` against the upstream sampling scripts, side by side.

Two anchors, each on one random-weight network that both sides run (same weights, same batch,
same step count, images written to disk as each script writes them):

* **ADM** -- guided-diffusion's ``scripts/image_sample.py`` loop (ancestral ``p_sample_loop`` on a
  respaced chain, clip_denoised, uint8 conversion, one npz at the end; its MPI gather left out)
  vs ``samplerkit sample --sampler ancestral --respacing K --format npz``. Network: ADM ImageNet-64
  shaped (resblock_updown, scale-shift norm, new attention order, attention at 32/16/8, learned
  sigma, class-conditional, cosine T=1000) with reduced width and depth (``--adm-channels``,
  ``--adm-blocks``).
* **EDM** -- NVlabs EDM's ``generate.py`` loop (its ``edm_sampler``, Heun with 18 steps, per-seed
  generators, one PNG per image) vs ``samplerkit sample --sampler heun --steps 18``. Network:
  EDMPrecond over DDPM++ (the CIFAR-10 conditional configuration) with reduced width and depth.

samplerkit runs twice per repeat: ``--speed exact`` (goal: >= 0.97x upstream; the difference is
the sampler and I/O overhead) and ``--speed fast`` (goal: >= 1.3x upstream on one of the two). The
three runs of a repeat alternate in one process, so load from other work spreads over all of
them; the figures are medians over repeats. The upstream code is imported from checkouts given
on the command line (or ``$GUIDED_DIFFUSION_DIR`` / ``$EDM_DIR``), never copied here. The
network is loaded once per side before timing: the timed part is sampling and writing images.
``fast``'s autotune runs once before the timed repeats (its cost is reported apart).

Usage: ``python benchmarks/bench_end_to_end.py --guided-diffusion DIR --edm DIR [--batch 8]
[--repeats 3] [--device auto] [--json FILE]``. Runs unchanged on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine_line, print_machine, random_weights

ADM_FLAGS = dict(
    image_size=64, num_channels=64, num_res_blocks=2, attention_resolutions="32,16,8", num_head_channels=32,
    resblock_updown=True, use_new_attention_order=True, learn_sigma=True, class_cond=True,
    use_scale_shift_norm=True, diffusion_steps=1000, noise_schedule="cosine", dropout=0.0,
)
EDM_KWARGS = dict(
    img_resolution=32, img_channels=3, label_dim=10, model_type="SongUNet", model_channels=64,
    channel_mult=[2, 2, 2], num_blocks=2, attn_resolutions=[16], embedding_type="positional",
    encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
    augment_dim=9, dropout=0.13,
)


def _import_path(directory: str | None, env: str, what: str) -> Path:
    path = Path(directory or os.environ.get(env) or "")
    if not str(path) or not path.is_dir():
        sys.exit(f"give the {what} checkout with --{what} DIR or ${env}")
    sys.path.insert(0, str(path.resolve()))
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# ADM: guided-diffusion's image_sample.py loop


def adm_setup(gd_dir, respacing: str, device: torch.device, work: Path):
    """(upstream model, upstream respaced diffusion, path of the shared .pt, samplerkit flags)."""
    _import_path(gd_dir, "GUIDED_DIFFUSION_DIR", "guided-diffusion")
    from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

    args = model_and_diffusion_defaults()
    args.update({k: v for k, v in ADM_FLAGS.items() if k in args})
    args["timestep_respacing"] = respacing
    torch.manual_seed(0)
    model, diffusion = create_model_and_diffusion(**args)
    random_weights(model)
    path = work / "adm.pt"
    torch.save(model.state_dict(), path)
    model.to(device).eval()
    return model, diffusion, path


def adm_upstream(model, diffusion, n: int, batch: int, device: torch.device, out: Path) -> None:
    """guided-diffusion's image_sample.py sampling loop (single process: no gather)."""
    all_images, all_labels = [], []
    while len(all_images) * batch < n:
        classes = torch.randint(low=0, high=1000, size=(batch,), device=device)
        sample = diffusion.p_sample_loop(model, (batch, 3, 64, 64), clip_denoised=True, model_kwargs={"y": classes})
        sample = ((sample + 1) * 127.5).clamp(0, 255).to(torch.uint8)
        sample = sample.permute(0, 2, 3, 1).contiguous()
        all_images.append(sample.cpu().numpy())
        all_labels.append(classes.cpu().numpy())
    arr = np.concatenate(all_images, axis=0)[:n]
    labels = np.concatenate(all_labels, axis=0)[:n]
    np.savez(out / f"samples_{'x'.join(str(x) for x in arr.shape)}.npz", arr, labels)


# ---------------------------------------------------------------------------------------------
# EDM: generate.py's loop


def edm_setup(edm_dir, device: torch.device, work: Path):
    """(upstream EDMPrecond, upstream edm_sampler, StackedRandomGenerator, path of the shared pickle)."""
    _import_path(edm_dir, "EDM_DIR", "edm")
    import generate as edm_generate  # EDM's generate.py (imports dnnlib, torch_utils from the checkout)
    from training import networks as edm_networks

    torch.manual_seed(0)
    net = edm_networks.EDMPrecond(**EDM_KWARGS)
    random_weights(net)
    net.eval().requires_grad_(False)
    path = work / "network-snapshot.pkl"
    with open(path, "wb") as f:
        pickle.dump({"ema": net}, f)  # EDM's persistence pickles the classes by their source
    return net.to(device), edm_generate.edm_sampler, edm_generate.StackedRandomGenerator, path


def edm_upstream(net, edm_sampler, generator_cls, seeds: list[int], batch: int, device: torch.device,
                 out: Path) -> None:
    """EDM generate.py's loop over batches: per-seed generators, edm_sampler, one PNG per image."""
    import PIL.Image

    for start in range(0, len(seeds), batch):
        batch_seeds = seeds[start : start + batch]
        rnd = generator_cls(device, batch_seeds)
        latents = rnd.randn([len(batch_seeds), net.img_channels, net.img_resolution, net.img_resolution],
                            device=device)
        class_labels = torch.eye(net.label_dim, device=device)[rnd.randint(net.label_dim, size=[len(batch_seeds)],
                                                                           device=device)]
        with torch.no_grad():
            images = edm_sampler(net, latents, class_labels, randn_like=rnd.randn_like, num_steps=18)
        images_np = (images * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for seed, image_np in zip(batch_seeds, images_np, strict=True):
            image_dir = out / f"{seed - seed % 1000:06d}"
            image_dir.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(image_np, "RGB").save(image_dir / f"{seed:06d}.png")


# ---------------------------------------------------------------------------------------------


def ours(net, speed: str, sampler: str, options: dict, n: int, batch: int, fmt: str, device, out: Path,
         model_name: str, family: str | None = None, flags: dict | None = None) -> dict:
    """``samplerkit sample`` (its library entry point) on the already loaded ``net``."""
    from samplerkit.runs import SampleSettings, sample_folder

    settings = SampleSettings(model=model_name, family=family, flags=flags or {}, sampler=sampler,
                              steps=options.pop("steps"), options=options, seeds=f"0-{n - 1}", batch=batch, out=out,
                              fmt=fmt, grid=False, device=device.type, quiet=True, speed=speed)
    return sample_folder(settings, net=net)


def timed(fn, device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``. On a CPU shared with other work the
    CPU time is the steadier measure of the work done; on a GPU the wall time is the one that counts."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


VARIANTS = ("upstream", "exact", "fast")


def anchor(name: str, upstream_fn, ours_fn, n: int, repeats: int, device, work: Path) -> dict:
    """Interleaved repeats of (upstream, exact, fast), the order rotated each repeat; images/s per run
    (wall and CPU time), medians and the median of the per-repeat ratios to upstream."""
    t0 = time.perf_counter()
    tune = ours_fn("fast", work / f"{name}-tune")  # autotune once (cached), not timed with the runs
    tune_seconds = time.perf_counter() - t0
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    loads = [os.getloadavg()[0]]
    for r in range(repeats):
        for variant in VARIANTS[r % 3:] + VARIANTS[:r % 3]:
            out = work / f"{name}-{variant}-{r}"
            out.mkdir()
            fn = (lambda o=out: upstream_fn(o)) if variant == "upstream" else (lambda o=out, v=variant: ours_fn(v, o))
            seconds, cpu_seconds = timed(fn, device)
            wall[variant].append(n / seconds)
            cpu[variant].append(n / cpu_seconds)
            print(f"  {name} repeat {r}: {variant:<8} {n / seconds:8.3f} images/s wall, {n / cpu_seconds:8.3f} "
                  f"images per CPU-second", flush=True)
        loads.append(os.getloadavg()[0])

    def summary(runs):
        return {"median": {k: statistics.median(v) for k, v in runs.items()},
                "median_of_ratios": {k: statistics.median([a / b for a, b in zip(runs[k], runs["upstream"],
                                                                                  strict=True)])
                                     for k in ("exact", "fast")},
                "per_run": runs}

    return {"wall": summary(wall), "cpu": summary(cpu), "fast_policy": tune["speed"]["policy"],
            "fast_table": tune["speed"]["table"], "autotune_seconds": round(tune_seconds, 2),
            "load_average_1min": loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guided-diffusion", dest="gd", default=None, help="guided-diffusion checkout")
    parser.add_argument("--edm", default=None, help="NVlabs EDM checkout")
    parser.add_argument("--only", choices=["adm", "edm"], default=None, help="run one anchor")
    parser.add_argument("--batch", type=int, default=8, help="images per batch, both sides (default 8)")
    parser.add_argument("--images", type=int, default=None, help="images per run (default: one batch)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--respacing", default="25", help="ADM: respaced chain length (default 25)")
    parser.add_argument("--adm-channels", type=int, default=None, help="ADM width (default 64; full ADM-64: 192)")
    parser.add_argument("--adm-blocks", type=int, default=None, help="ADM res blocks per level (default 2; full: 3)")
    parser.add_argument("--edm-channels", type=int, default=None, help="DDPM++ width (default 64; full: 128)")
    parser.add_argument("--edm-blocks", type=int, default=None, help="DDPM++ blocks per level (default 2; full: 4)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="write the figures (and the machine) to this file")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.adm_channels:
        ADM_FLAGS["num_channels"] = args.adm_channels
    if args.adm_blocks:
        ADM_FLAGS["num_res_blocks"] = args.adm_blocks
    if args.edm_channels:
        EDM_KWARGS["model_channels"] = args.edm_channels
    if args.edm_blocks:
        EDM_KWARGS["num_blocks"] = args.edm_blocks
    n = args.images or args.batch
    info = print_machine(device)
    results: dict = {"machine": info, "batch": args.batch, "images": n, "repeats": args.repeats}
    import samplerkit as sk

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "adm"):
            model, diffusion, pt = adm_setup(args.gd, args.respacing, device, work)
            flags = {k: v for k, v in ADM_FLAGS.items() if k != "dropout"}
            net = sk.load(str(pt), family="adm", device=device, **flags)
            options = {"steps": int(args.respacing), "respacing": args.respacing}
            with torch.no_grad():
                results["adm"] = anchor(
                    "adm", lambda out: adm_upstream(model, diffusion, n, args.batch, device, out),
                    lambda speed, out: ours(net, speed, "ancestral", dict(options), n, args.batch, "npz", device, out,
                                            str(pt), "adm", flags),
                    n, args.repeats, device, work)
            results["adm"]["network"] = {k: v for k, v in ADM_FLAGS.items()}
            results["adm"]["steps"] = f"ancestral, respacing {args.respacing} (NFE {args.respacing})"
        if args.only in (None, "edm"):
            unet, edm_sampler, gen_cls, pkl = edm_setup(args.edm, device, work)
            net = sk.load(str(pkl), device=device)
            results["edm"] = anchor(
                "edm", lambda out: edm_upstream(unet, edm_sampler, gen_cls, list(range(n)), args.batch, device, out),
                lambda speed, out: ours(net, speed, "heun", {"steps": 18}, n, args.batch, "png", device, out,
                                        str(pkl)),
                n, args.repeats, device, work)
            results["edm"]["network"] = {k: v for k, v in EDM_KWARGS.items()}
            results["edm"]["steps"] = "heun, 18 steps (NFE 35)"
    results["machine_after"] = {"load_average": [round(v, 2) for v in os.getloadavg()]}

    print(f"\nend to end, {device.type}, batch {args.batch}, {n} images per run, {args.repeats} interleaved repeats")
    print(machine_line(info))
    for measure, label in (("wall", "wall clock"), ("cpu", "CPU time of the process")):
        print(f"\n{label}: images/s (medians) and the median of the per-repeat ratios to upstream")
        print(f"{'anchor':<6}{'upstream':>10}{'exact':>10}{'fast':>10}{'exact/up':>10}{'fast/up':>9}  fast policy")
        for name in ("adm", "edm"):
            if name in results:
                m, q = results[name][measure]["median"], results[name][measure]["median_of_ratios"]
                print(f"{name:<6}{m['upstream']:>10.3f}{m['exact']:>10.3f}{m['fast']:>10.3f}{q['exact']:>10.3f}"
                      f"{q['fast']:>9.3f}  {results[name]['fast_policy']}")
    for name in ("adm", "edm"):
        if name in results:
            print(f"\n{name}: variant table of the fast autotune ({results[name]['autotune_seconds']} s)")
            for row in results[name]["fast_table"]:
                speedup = f"{row['speedup']:.2f}x" if row["speedup"] else "-"
                print(f"  {row['policy']:<60} {speedup:>7}  max error {row['max_error']:.2e}"
                      f"{'' if row['within'] else '  (beyond tolerance)'}")
    print(f"load average after: {results['machine_after']['load_average']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
