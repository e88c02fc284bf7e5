"""Cost of classifier guidance (Dhariwal & Nichol 2021) per sampling step: guided vs unguided on the
same model, latents and chain.

A guided step adds one classifier forward and backward pass (the gradient of log p(y | x_t, t))
to the model's forward pass. The networks have the architectures of the ImageNet-64 release
(``adm-imagenet64``: 3 residual blocks per level, attention at 32/16/8, channel_mult 1,2,3,4;
``adm-imagenet64-classifier``: depth 4, attention pooling) at reduced width -- the model at
``--model-width`` (release 192), the classifier at ``--classifier-width`` (release 128), heads of
32 channels -- with random weights, so that a CPU runs them; both costs scale with width^2, so the
ratio stays close to the release's.

Printed: CPU time per step of ``ddim`` unguided, guided (score form) and guided (upstream form),
and ``ancestral`` unguided vs guided (upstream form), as ratios to the unguided step; and the
classifier's forward + backward alone as a fraction of the model's forward. All pairs run
interleaved in one process (plain, guided, guided, plain, ...); the figure is the median ratio
over the repeats, the best beside it. Times are CPU seconds of this process (all threads).

    python benchmarks/bench_guidance.py [--batch 2] [--steps 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from samplerkit.adapters import adm
from samplerkit.adapters import classifier as C

import samplerkit as sk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_remedies import cpu_model  # noqa: E402
from test_adapter_adm import random_state_dict, template_of  # noqa: E402


def networks(model_width: int, classifier_width: int, tmp: Path):
    """The release-shaped model (unconditional here, as adm-imagenet256-uncond) and classifier, random weights."""
    model_flags = dict(image_size=64, num_channels=model_width, num_res_blocks=3, attention_resolutions="32,16,8",
                       num_head_channels=32, learn_sigma=True, resblock_updown=True, use_new_attention_order=True)
    clf_flags = dict(image_size=64, classifier_width=classifier_width, classifier_depth=4,
                     classifier_num_head_channels=32)
    torch.save(random_state_dict(template_of(adm.create_unet, **model_flags), 0), tmp / "model.pt")
    torch.save(random_state_dict(template_of(C.create_classifier, **clf_flags), 1), tmp / "clf.pt")
    net = sk.load(tmp / "model.pt", family="adm", noise_schedule="cosine", **model_flags)
    clf = sk.load(tmp / "clf.pt", family="adm-classifier", noise_schedule="cosine", **clf_flags)
    return net, clf


def timed(fn) -> float:
    t0 = time.process_time()
    with torch.no_grad():
        fn()
    return time.process_time() - t0


def interleaved(plain, other, repeats: int) -> tuple[list[float], float]:
    """(ratios other / plain over the repeats, median plain CPU seconds)."""
    timed(plain), timed(other)  # warm-up
    ratios, plain_times = [], []
    for r in range(repeats):
        order = (plain, other) if r % 2 == 0 else (other, plain)
        t = {id(fn): timed(fn) for fn in order}
        ratios.append(t[id(other)] / t[id(plain)])
        plain_times.append(t[id(plain)])
    return ratios, statistics.median(plain_times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model-width", type=int, default=96)
    ap.add_argument("--classifier-width", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        net, clf = networks(args.model_width, args.classifier_width, Path(tmp))
    n_model = sum(p.numel() for p in net.parameters())
    n_clf = sum(p.numel() for p in clf.parameters())
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; batch "
          f"{args.batch}, {args.steps} steps, 64x64; model width {args.model_width} ({n_model / 1e6:.1f} M params), "
          f"classifier width {args.classifier_width} ({n_clf / 1e6:.1f} M params)")
    lat = torch.randn(args.batch, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    y = torch.arange(args.batch) % 1000
    chain = sk.schedules.respace(1000, str(args.steps))
    zeros = torch.zeros_like
    score = sk.guidance.classifier_guided(net, clf, 1.0, "score")
    upstream = sk.guidance.classifier_guided(net, clf, 1.0, "upstream")
    x_t = lat.clone()
    t = torch.full((args.batch,), 500)
    sigma = net.sigmas[t]
    pairs = [
        ("ddim, score form", lambda: sk.samplers.ddim(net, lat, chain), lambda: sk.samplers.ddim(score, lat, chain, y)),
        ("ddim, upstream form", lambda: sk.samplers.ddim(net, lat, chain),
         lambda: sk.samplers.ddim(upstream, lat, chain, y)),
        ("ancestral, upstream form", lambda: sk.samplers.ancestral(net, lat, chain, randn_like=zeros),
         lambda: sk.samplers.ancestral(upstream, lat, chain, y, randn_like=zeros)),
        ("classifier fwd+bwd / model fwd", lambda: net(x_t, sigma),
         lambda: score.grad_log_prob(x_t, sigma, y)),
    ]
    for name, plain, guided in pairs:
        ratios, plain_seconds = interleaved(plain, guided, args.repeats)
        per = "call" if name.startswith("classifier") else "step"
        steps = 1 if per == "call" else args.steps
        print(f"{name:32s} median {statistics.median(ratios):.3f}x  best {min(ratios):.3f}x  "
              f"(unguided {plain_seconds / steps:.2f} CPU s/{per}, batch {args.batch})")


if __name__ == "__main__":
    main()
