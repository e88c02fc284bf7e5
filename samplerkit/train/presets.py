"""Training presets: Tab. 9 of Ning et al. 2023 (ADM and ADM-IP share them) and the CPU-sized ``tiny``.

Each preset holds guided-diffusion flags (architecture + diffusion) and loop settings; every
flag can be overridden with ``--flag KEY=VALUE``. Tab. 9 does not name the timestep sampler;
the released ADM-IP training commands use guided-diffusion's ``loss-second-moment`` sampler
(Nichol & Dhariwal 2021, Eq. 18 applied to the hybrid loss) with ``rescale_learned_sigmas``
(lambda L_vlb = (T / 1000) L_t, T = 1000 here), so the Tab. 9 presets do too; they keep
guided-diffusion's loop (EMA 0.9999, no warm-up, no clipping).

``tiny`` is the recipe of the built-in models shapes32-adm / shapes32-adm-ip
(``benchmarks/shapes32_recipe.sh``, settings in ``benchmarks/results/shapes32-*-settings.json``):
lr 5e-4 with 500 warm-up steps, gradient norm clipped to 1, EMA 0.999, batch 16, plus EMA
warm-up (rate min(0.999, (1 + s) / (10 + s)) at step s, see :mod:`.loop`) so that a run
shorter than the recipe's 12,000 steps still gets a usable EMA. The built-in models were
trained without EMA warm-up (their recipe passes ``--no-ema-warmup``); sample a tiny run's
``ema_0.999_<last step>.pt``.

``tiny-edm`` is ``tiny``'s counterpart for ``--precond edm`` (and the recipe of shapes32-edm /
shapes32-edm-ip, ``benchmarks/shapes32_edm_recipe.sh``): EDM's DDPM++ (SongUNet with positional
embedding, standard encoder/decoder, resample filter [1, 1]; Karras et al. 2022 (EDM), App. F.2)
shrunk as ``tiny`` shrinks ADM -- 32 base channels, multipliers 1, 2, 2, one block per resolution,
attention at 8x8, no dropout: 1.26 M parameters against ``tiny``'s 1.37 M -- behind EDM's
preconditioning, with ``tiny``'s optimiser settings and EDM's EMA (half-life 10 kimg, ramp-up 0.05).
Its flags are the preconditioner's constructor arguments, as an EDM pickle records them.
"""

from __future__ import annotations

from ..errors import SamplerkitError

_ADM = dict(learn_sigma=True, noise_schedule="cosine", diffusion_steps=1000, resblock_updown=True,
            use_scale_shift_norm=True, use_new_attention_order=True, class_cond=False)

# App. A.7: 16-bit mixed precision with loss scaling, fp32 weights / EMA / optimizer state
_LOOP = {"schedule_sampler": "loss-second-moment", "precision": "fp16"}

# Ning et al. 2023, Tab. 9: CIFAR-10 and ImageNet 32 share one network, LSUN tower and CelebA 64 another
_NET_32 = dict(_ADM, image_size=32, num_channels=128, num_res_blocks=3, channel_mult="1,2,2,2",
               num_head_channels=32, attention_resolutions="16,8", dropout=0.3)
_NET_64 = dict(_ADM, image_size=64, num_channels=192, num_res_blocks=3, channel_mult="1,2,3,4",
               num_head_channels=64, attention_resolutions="32,16,8", dropout=0.1)
_NET_128 = dict(_ADM, image_size=128, num_channels=256, num_res_blocks=3, channel_mult="1,1,2,3,4",
                num_head_channels=64, attention_resolutions="32,16,8", dropout=0.1)


def _paper(flags: dict, batch_size: int, iterations: int) -> dict:
    return {"flags": flags, "batch_size": batch_size, "iterations": iterations, "lr": 1e-4, **_LOOP}


PRESETS: dict[str, dict] = {
    "cifar10": _paper(_NET_32, 128, 540_000),
    "imagenet32": _paper(_NET_32, 512, 5_000_000),
    "lsun-tower64": _paper(_NET_64, 256, 340_000),
    "celeba64": _paper(_NET_64, 256, 540_000),
    "ffhq128": _paper(_NET_128, 128, 480_000),
    # CPU-sized: a few iterations per second on 2 cores at batch 16; the built-in models' recipe
    "tiny": {"flags": dict(_ADM, image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2,2",
                           num_head_channels=16, attention_resolutions="8", dropout=0.0),
             "batch_size": 16, "iterations": 2000, "lr": 5e-4, "warmup": 500, "grad_clip": 1.0,
             "ema_rates": (0.999,), "ema_warmup": True},
    "tiny-edm": {"precond": "edm",
                 "flags": dict(model_type="SongUNet", img_resolution=32, model_channels=32, channel_mult="1,2,2",
                               num_blocks=1, attn_resolutions="8", dropout=0.0, embedding_type="positional",
                               encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
                               resample_filter="1,1"),
                 "batch_size": 16, "iterations": 2000, "lr": 5e-4, "warmup": 500, "grad_clip": 1.0,
                 "loss": "simple", "schedule_sampler": "uniform", "ema_halflife_kimg": 10.0, "ema_rampup_ratio": 0.05},
}


def family(name: str) -> str:
    """The preconditioning a preset trains: ``adm`` or EDM's ``edm`` / ``vp`` / ``ve``."""
    return preset(name).get("precond", "adm")


def preset(name: str) -> dict:
    """A copy of preset ``name``: {"flags": {...}, "batch_size", "iterations", "lr", ...}; loop settings it
    leaves out take :class:`~samplerkit.train.TrainConfig`'s defaults."""
    if name not in PRESETS:
        raise SamplerkitError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    p = PRESETS[name]
    return {"flags": dict(p["flags"]), **{k: v for k, v in p.items() if k != "flags"}}
