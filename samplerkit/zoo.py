"""The model zoo: one :class:`ZooEntry` per published checkpoint, by name.

Names are ``<source>-<dataset>[-<variant>...]``, lowercase:

* ``<source>`` is the release: ``adm`` (guided-diffusion, Dhariwal & Nichol 2021; and the ADM
  baselines of the DDPM-IP release), ``adm-ip`` (DDPM-IP, Ning et al. 2023), ``iddpm``
  (improved-diffusion, Nichol & Dhariwal 2021), ``edm`` (EDM config F, Karras et al. 2022),
  ``vp`` / ``ve`` (EDM's config-A baseline pickles: score-SDE DDPM++ / NCSN++, Karras et al.
  2022 (EDM), Table 2 row A).
* ``<dataset>`` carries the resolution only where the zoo holds that dataset at several
  resolutions: ``imagenet32/64/128/256/512``, ``ffhq64/128``; but ``cifar10`` (32 px),
  ``afhqv2`` (64), ``celeba`` (64), ``lsun-tower`` (64), ``lsun-bedroom/cat/horse`` (256).
* Variants: ``-cond`` / ``-uncond`` where one release has both for a dataset (EDM names always
  say which, as its pickles do); ``-vp`` / ``-ve`` for EDM's two architectures; ``-vlb`` for the
  iDDPM L_vlb models; ``-pkl`` for EDM's re-pickled copy of a model the zoo also has as a
  ``.pt`` (``adm-imagenet64-pkl``); other upstream distinctions spelled out (``-nodropout``).

Flags of ``adm``/``iddpm`` entries use the upstream flag names and values of the release
READMEs (architecture and diffusion flags only), except ``use_fp16``: the files hold fp32
weights and the zoo loads them in fp32 (pass ``use_fp16=True`` to convert on a GPU).
``sha256`` is given only where published; otherwise the digest of the cached file is recorded
next to it when the file first loads, and verified on later loads (see :mod:`samplerkit.download`).
``recommended`` holds sampler settings in the keys of ``samplerkit sample`` (``sampler``,
``steps`` and that sampler's options), taken from the release or its paper. Every FID in
``notes`` names its setting (guided or not, sampler and steps) and the table it is from.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import download
from .errors import DamagedFileError, SamplerkitError
from .guidance import guided
from .output import file_sha256

FAMILIES = ("adm", "iddpm", "edm", "builtin", "adm-classifier", "adm-superres", "iddpm-superres", "edm2", "vae", "dit",
            "sit")
_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
MODELS_DIR = Path(__file__).resolve().parent / "models"  # the networks shipped inside the package
DEFAULT_MODEL = "shapes32-adm-ip" if (MODELS_DIR / "shapes32-adm-ip.pt").is_file() else "shapes32-ideal"
"""What ``samplerkit sample`` and ``samplerkit.load()`` use without a name (built in: offline)."""


@dataclass(frozen=True)
class ZooEntry:
    """A published checkpoint: where it is, what it is, and how to load and sample it.

    ``T`` and ``schedule`` describe the training noise process (``T=None`` for continuous-time
    models; ``schedule`` "linear"/"cosine" for discrete DDPM schedules, "vp"/"ve"/"edm" for the
    EDM pickles). ``loader`` (family "builtin" only) builds the model without a download.
    """

    name: str
    family: str
    urls: tuple[str, ...] = ()
    filename: str = ""
    size: int | None = None
    sha256: str | None = None
    license: str = ""
    resolution: int = 0
    conditional: bool = False
    num_classes: int = 0
    flags: dict[str, Any] = field(default_factory=dict)
    T: int | None = None
    schedule: str = ""
    recommended: dict[str, Any] = field(default_factory=dict)
    eps_scaler: dict[str, Any] = field(default_factory=dict)  # Epsilon Scaling's lambda where its authors state one
    # guidance: a guided preset {"gnet": zoo name, "weight": w} (loads as net guided by gnet), or the
    # classifier-free guidance a release samples with {"weight": w, "form": ...} (recorded, not applied)
    guidance: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    source: str = ""
    notes: str = ""
    loader: Callable[[], Any] | None = field(default=None, compare=False, repr=False)
    subdir: str = ""  # a multi-file entry (a diffusers folder) is cached in this sub-folder of the cache
    extra_files: tuple[tuple[str, str], ...] = ()  # (filename, url): fetched into the same folder first

    def local_path(self, cache_dir: str | Path | None = None) -> Path | None:
        """Where the checkpoint is (or will be) cached; a shipped model's file in the package; None
        for an analytic built-in model."""
        if self.family == "builtin":
            return Path(self.filename) if self.filename else None
        base = Path(cache_dir).expanduser() if cache_dir else download.default_cache_dir()
        return (base / self.subdir if self.subdir else base) / self.filename

    def is_cached(self, cache_dir: str | Path | None = None) -> bool:
        """True when the file is in the cache (always for a built-in model)."""
        return self.family == "builtin" or self.local_path(cache_dir).is_file()

    def expected_sha256(self, cache_dir: str | Path | None = None) -> str | None:
        """The published sha256, else the trusted one recorded when the cached file first loaded (a
        shipped model: its file's, computed once), else None."""
        if self.sha256:
            return self.sha256
        if self.family == "builtin":
            return file_sha256(self.filename) if self.filename else None
        return download.trusted_sha256(self.local_path(cache_dir))

    def download(self, progress: bool = True, cache_dir: str | Path | None = None) -> Path:
        """Fetch the checkpoint into the cache (trying each URL in turn) and return its path."""
        if self.family == "builtin":
            raise SamplerkitError(f"{self.name} is a built-in model; there is nothing to download")
        if self.subdir:
            cache_dir = self.local_path(cache_dir).parent
        for extra, url in self.extra_files:
            download.fetch(url, cache_dir=cache_dir, progress=progress, filename=extra, label=self.name)
        errors = []
        for url in self.urls:
            try:
                return download.fetch(url, sha256=self.sha256, cache_dir=cache_dir, progress=progress,
                                      filename=self.filename, label=self.name)
            except SamplerkitError as err:
                errors.append(str(err))
        raise SamplerkitError(" | ".join(errors))

    def load(self, device: Any = "cpu", family: str | None = None, **overrides: Any):
        """Download (cached) and load as a denoiser D(x; sigma); ``overrides`` replace flags.

        Without a published sha256 the file's digest becomes the trusted one only here, once the
        file has loaded (see :mod:`samplerkit.download`)."""
        if self.family == "builtin":
            if family is not None or overrides:
                raise SamplerkitError(f"{self.name} is a built-in model; it takes no family or flags")
            return self.loader().to(device)
        if self.family == "vae":
            raise SamplerkitError(f"{self.name} is an autoencoder, not a denoiser: pass it as autoencoder= to a "
                                  "latent model, or load it with samplerkit.autoencoders.load_vae")
        if _file_loader is None:
            raise SamplerkitError("no checkpoint loader is installed; import samplerkit.loading first")
        path = self.download()
        try:
            net = _file_loader(path, family=family or self.family, device=device, **{**self.flags, **overrides})
        except SamplerkitError as err:
            if isinstance(err, DamagedFileError):  # it already says how to download it again
                raise
            if self.sha256 or download.trusted_sha256(path):
                raise
            raise SamplerkitError(
                f"{err} ({path} has never loaded, so its digest is not trusted: if the file is damaged, delete it "
                f"and run again to download it, or put a good copy there)") from None
        if not self.sha256:
            download.trust(path, self.urls[0])
        if self.family == "edm2":  # EDM2 presets name both networks of a guided run: record which file this is
            net.name, net.sha256 = Path(self.filename).stem, self.expected_sha256()
        if self.guidance.get("gnet") and self.guidance["weight"] != 1:
            gnet = get(self.guidance["gnet"]).load(device=device)
            return guided(net, gnet, self.guidance["weight"])
        return net


_REGISTRY: dict[str, ZooEntry] = {}

# How a downloaded checkpoint file becomes a network: samplerkit.loading.load_file, which installs itself
# here when samplerkit is imported. The loaders sit above the zoo (the adapters ask it for VAEs, the
# damaged-file check for sizes), so the zoo calls them through this slot instead of importing them.
_file_loader: Callable[..., Any] | None = None


def set_file_loader(load_file: Callable[..., Any]) -> None:
    """Install the function ``ZooEntry.load`` reads a checkpoint file with (``load_file(path, family=,
    device=, **flags)``); samplerkit.loading calls this once, at import."""
    global _file_loader
    _file_loader = load_file


def register(entry: ZooEntry, replace: bool = False) -> ZooEntry:
    """Add ``entry`` to the zoo (``replace=True`` to overwrite a name); returns it."""
    if not _NAME.match(entry.name):
        raise SamplerkitError(f"zoo name {entry.name!r} must be lowercase letters, digits, '.' and '-'")
    if entry.family not in FAMILIES:
        raise SamplerkitError(f"zoo entry {entry.name}: family must be one of {', '.join(FAMILIES)}")
    if entry.family == "builtin":
        if entry.loader is None or entry.urls:
            raise SamplerkitError(f"built-in zoo entry {entry.name} needs a loader and no urls")
    elif not entry.urls or not entry.filename:
        raise SamplerkitError(f"zoo entry {entry.name} needs urls and a filename")
    if entry.name in _REGISTRY and not replace:
        raise SamplerkitError(f"zoo name {entry.name} is taken; pass replace=True to overwrite it")
    _REGISTRY[entry.name] = entry
    return entry


def get(name: str) -> ZooEntry:
    """The entry called ``name``; an unknown name is an error listing the closest names."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise SamplerkitError(f"unknown model {name!r}; {hint}`samplerkit models list` shows them all")


def entries() -> list[ZooEntry]:
    """All entries, in registration order."""
    return list(_REGISTRY.values())


# ---------------------------------------------------------------------------------------------
# guided-diffusion (ADM): github.com/openai/guided-diffusion README, MIT license

_GD = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
_GD_SOURCE = "https://github.com/openai/guided-diffusion#download-pre-trained-models"
_GD_COMMON = dict(attention_resolutions="32,16,8", diffusion_steps=1000, learn_sigma=True, resblock_updown=True,
                  use_scale_shift_norm=True, use_fp16=False)
# guided-diffusion's sampling scripts use --timestep_respacing 250 for ImageNet, 1000 for LSUN
_GD_IMAGENET_SAMPLER = {"sampler": "ancestral", "steps": 250, "variance": "learned"}
_GD_LSUN_SAMPLER = {"sampler": "ancestral", "steps": 1000, "variance": "learned"}
# tables by the numbering of the arXiv version the README's References cite (2105.05233v4); the
# main comparison is Table 5 there, Table 4 in the NeurIPS 2021 version
_DN21_MAIN = "Dhariwal & Nichol 2021, arXiv v4 Tab. 5"


def _adm(name, filename, resolution, dataset, flags, recommended, notes="", num_classes=0):
    cond = bool(flags.get("class_cond", False))
    flags = {"image_size": resolution, **_GD_COMMON, "class_cond": cond, **flags}
    register(ZooEntry(
        name=name, family="adm", urls=(_GD + filename,), filename=filename, license="MIT",
        resolution=resolution, conditional=cond, num_classes=num_classes if cond else 0, flags=flags,
        T=flags["diffusion_steps"], schedule=flags["noise_schedule"], recommended=recommended,
        dataset=dataset, source=_GD_SOURCE, notes=notes,
    ))


_adm("adm-imagenet64", "64x64_diffusion.pt", 64, "ImageNet 64x64",
     dict(class_cond=True, dropout=0.1, noise_schedule="cosine", num_channels=192, num_head_channels=64,
          num_res_blocks=3, use_new_attention_order=True),
     _GD_IMAGENET_SAMPLER, "ADM (dropout), class-conditional: FID 2.07 unguided, 250 ancestral steps "
     f"({_DN21_MAIN})", 1000)
_adm("adm-imagenet128", "128x128_diffusion.pt", 128, "ImageNet 128x128",
     dict(class_cond=True, noise_schedule="linear", num_channels=256, num_heads=4, num_res_blocks=2),
     _GD_IMAGENET_SAMPLER, "ADM, class-conditional: FID 5.91 unguided; 2.97 with classifier guidance (ADM-G, "
     f"scale 0.5), 250 ancestral steps ({_DN21_MAIN})", 1000)
_adm("adm-imagenet256", "256x256_diffusion.pt", 256, "ImageNet 256x256",
     dict(class_cond=True, noise_schedule="linear", num_channels=256, num_head_channels=64, num_res_blocks=2),
     _GD_IMAGENET_SAMPLER, "ADM, class-conditional: FID 10.94 unguided; 4.59 with classifier guidance (ADM-G), "
     f"250 ancestral steps ({_DN21_MAIN})", 1000)
_adm("adm-imagenet256-uncond", "256x256_diffusion_uncond.pt", 256, "ImageNet 256x256",
     dict(class_cond=False, noise_schedule="linear", num_channels=256, num_head_channels=64, num_res_blocks=2),
     _GD_IMAGENET_SAMPLER, "ADM trained without labels (upstream pairs it with classifier guidance): FID 26.21 "
     "unguided; 12.00 with classifier guidance at scale 10 (adm-imagenet256-classifier, --classifier-scale 10) "
     "(Dhariwal & Nichol 2021, arXiv v4 Tab. 4, the effect of guidance)")
_adm("adm-imagenet512", "512x512_diffusion.pt", 512, "ImageNet 512x512",
     dict(class_cond=True, noise_schedule="linear", num_channels=256, num_head_channels=64, num_res_blocks=2),
     _GD_IMAGENET_SAMPLER, "ADM, class-conditional: FID 23.24 unguided; 7.72 with classifier guidance (ADM-G), "
     f"250 ancestral steps ({_DN21_MAIN})", 1000)
for _cls, _fid in (("bedroom", 1.90), ("cat", 5.57), ("horse", 2.57)):
    _adm(f"adm-lsun-{_cls}", f"lsun_{_cls}.pt", 256, f"LSUN {_cls} 256x256",
         dict(dropout=0.1, noise_schedule="linear", num_channels=256, num_head_channels=64, num_res_blocks=2),
         _GD_LSUN_SAMPLER, f"ADM (dropout), unconditional: FID {_fid} with 1000 ancestral steps "
                           f"({_DN21_MAIN})")
_adm("adm-lsun-horse-nodropout", "lsun_horse_nodropout.pt", 256, "LSUN horse 256x256",
     dict(dropout=0.0, noise_schedule="linear", num_channels=256, num_head_channels=64, num_res_blocks=2),
     _GD_LSUN_SAMPLER, "ADM without dropout, unconditional: FID 2.95 with 1000 ancestral steps "
     f"({_DN21_MAIN}; 2.57 with dropout, adm-lsun-horse)")

# the noisy-image classifiers of ADM-G (classifier_defaults(), --classifier_depth 4 at 64 px) and the
# upsamplers of ADM-U, with the flags and --classifier_scale of the README's sampling commands;
# a classifier was trained on its base model's noise schedule
_CLF_DEFAULTS = dict(classifier_width=128, classifier_depth=2, classifier_attention_resolutions="32,16,8",
                     classifier_use_scale_shift_norm=True, classifier_resblock_updown=True,
                     classifier_pool="attention", diffusion_steps=1000)


def _classifier(resolution, schedule, guides, depth=2):
    filename = f"{resolution}x{resolution}_classifier.pt"
    register(ZooEntry(
        name=f"adm-imagenet{resolution}-classifier", family="adm-classifier", urls=(_GD + filename,),
        filename=filename, license="MIT", resolution=resolution, num_classes=1000,
        flags={"image_size": resolution, **_CLF_DEFAULTS, "classifier_depth": depth, "noise_schedule": schedule},
        T=1000, schedule=schedule, recommended=dict(_GD_IMAGENET_SAMPLER),
        dataset=f"ImageNet {resolution}x{resolution}", source=_GD_SOURCE,
        notes="noisy-image classifier for classifier guidance (ADM-G); guides "
        + ", ".join(f"{m} at --classifier-scale {s}" for m, s in guides) + " (guided-diffusion README)",
    ))


_classifier(64, "cosine", [("adm-imagenet64", 1.0)], depth=4)
_classifier(128, "linear", [("adm-imagenet128", 0.5)])
_classifier(256, "linear", [("adm-imagenet256", 1.0), ("adm-imagenet256-uncond", 10.0)])
_classifier(512, "linear", [("adm-imagenet512", 4.0)])


def _upsampler(name, filename, small, large, flags, notes):
    flags = {"large_size": large, "small_size": small, "class_cond": True, "learn_sigma": True, "diffusion_steps": 1000,
             "noise_schedule": "linear", "num_channels": 192, "num_res_blocks": 2, "resblock_updown": True,
             "use_scale_shift_norm": True, **flags}
    register(ZooEntry(
        name=name, family="adm-superres", urls=(_GD + filename,), filename=filename, license="MIT",
        resolution=large, conditional=True, num_classes=1000, flags=flags, T=1000, schedule="linear",
        recommended=dict(_GD_IMAGENET_SAMPLER), dataset=f"ImageNet {small}x{small} -> {large}x{large}",
        source=_GD_SOURCE, notes=notes,
    ))


_upsampler("adm-imagenet64to256-upsampler", "64_256_upsampler.pt", 64, 256,
           dict(attention_resolutions="32,16,8", num_heads=4),
           "ADM-U: upsamples 64x64 images (samplerkit sample --low-res, or --then-upsample after adm-imagenet64); "
           "FID 3.94 on ImageNet 256 with guided base samples (guided-diffusion README)")
_upsampler("adm-imagenet128to512-upsampler", "128_512_upsampler.pt", 128, 512,
           dict(attention_resolutions="32,16", num_head_channels=64),
           "ADM-U: upsamples 128x128 images (samplerkit sample --low-res, or --then-upsample after adm-imagenet128); "
           "FID 3.85 on ImageNet 512 with guided base samples (guided-diffusion README); the paper's footnote says the "
           "128x128 base model was guided there by a different classifier than the released "
           "adm-imagenet128-classifier, so the released pair may not reproduce 3.85")


# ---------------------------------------------------------------------------------------------
# improved-diffusion (iDDPM): github.com/openai/improved-diffusion README, MIT license

_ID = "https://openaipublic.blob.core.windows.net/diffusion/march-2021/"
_ID_SOURCE = "https://github.com/openai/improved-diffusion#models-and-hyperparameters"
# model_and_diffusion_defaults() of improved-diffusion, the values that shape the network
_ID_DEFAULTS = dict(num_heads=4, attention_resolutions="16,8", dropout=0.0, class_cond=False,
                    use_scale_shift_norm=True, rescale_timesteps=True)
# Nichol & Dhariwal 2021, Sec. 4: L_hybrid models reach near-optimal FID with 100 respaced ancestral steps
_ID_SAMPLER = {"sampler": "ancestral", "steps": 100, "variance": "learned"}


def _iddpm(name, filename, resolution, dataset, flags, notes="", recommended=_ID_SAMPLER, num_classes=0):
    flags = {**_ID_DEFAULTS, "image_size": resolution, "learn_sigma": True, **flags}
    cond = bool(flags["class_cond"])
    register(ZooEntry(
        name=name, family="iddpm", urls=(_ID + filename,), filename=filename, license="MIT",
        resolution=resolution, conditional=cond, num_classes=num_classes if cond else 0, flags=flags,
        T=flags["diffusion_steps"], schedule=flags["noise_schedule"], recommended=dict(recommended),
        dataset=dataset, source=_ID_SOURCE, notes=notes,
    ))


_iddpm("iddpm-cifar10", "cifar10_uncond_50M_500K.pt", 32, "CIFAR-10",
       dict(num_channels=128, num_res_blocks=3, dropout=0.3, diffusion_steps=4000, noise_schedule="cosine"),
       "L_hybrid, cosine schedule, 500K iterations")
_iddpm("iddpm-cifar10-vlb", "cifar10_uncond_vlb_50M_500K.pt", 32, "CIFAR-10",
       dict(num_channels=128, num_res_blocks=3, dropout=0.3, diffusion_steps=4000, noise_schedule="cosine"),
       "L_vlb (best log-likelihood), cosine schedule", {"sampler": "ancestral", "steps": 4000, "variance": "learned"})
_iddpm("iddpm-imagenet64", "imagenet64_uncond_100M_1500K.pt", 64, "ImageNet 64x64",
       dict(num_channels=128, num_res_blocks=3, diffusion_steps=4000, noise_schedule="cosine"),
       "unconditional, L_hybrid, cosine schedule, 1.5M iterations")
_iddpm("iddpm-imagenet64-vlb", "imagenet64_uncond_vlb_100M_1500K.pt", 64, "ImageNet 64x64",
       dict(num_channels=128, num_res_blocks=3, diffusion_steps=4000, noise_schedule="cosine"),
       "unconditional, L_vlb (best log-likelihood)", {"sampler": "ancestral", "steps": 4000, "variance": "learned"})
_iddpm("iddpm-imagenet64-cond", "imagenet64_cond_270M_250K.pt", 64, "ImageNet 64x64",
       dict(num_channels=192, num_res_blocks=3, class_cond=True, diffusion_steps=4000, noise_schedule="cosine",
            rescale_timesteps=False),
       "class-conditional, 270M parameters, 250K iterations", num_classes=1000)
_iddpm("iddpm-lsun-bedroom", "lsun_uncond_100M_1200K_bs128.pt", 256, "LSUN bedroom 256x256",
       dict(num_channels=128, num_res_blocks=2, num_heads=1, use_scale_shift_norm=False, attention_resolutions="16",
            diffusion_steps=1000, noise_schedule="linear", rescale_timesteps=False),
       "lr 1e-4, batch 128, 1.2M iterations")
_iddpm("iddpm-lsun-bedroom-lr2e-5", "lsun_uncond_100M_2400K_bs64.pt", 256, "LSUN bedroom 256x256",
       dict(num_channels=128, num_res_blocks=2, num_heads=1, use_scale_shift_norm=False, attention_resolutions="16",
            diffusion_steps=1000, noise_schedule="linear", rescale_timesteps=False),
       "lr 2e-5, 2.4M iterations")
register(ZooEntry(
    name="iddpm-imagenet64to256-upsampler", family="iddpm-superres", urls=(_ID + "upsample_cond_500K.pt",),
    filename="upsample_cond_500K.pt", license="MIT", resolution=256, conditional=True, num_classes=1000,
    flags={**_ID_DEFAULTS, "large_size": 256, "small_size": 64, "num_channels": 192, "num_res_blocks": 2,
           "learn_sigma": True, "class_cond": True, "diffusion_steps": 4000, "noise_schedule": "linear",
           "rescale_timesteps": False},
    T=4000, schedule="linear", recommended=dict(_ID_SAMPLER), dataset="ImageNet 64x64 -> 256x256",
    source=_ID_SOURCE, notes="class-conditional upsampler, 280M parameters, 500K iterations (samplerkit sample "
    "--low-res); the README gives no sampling steps: 100 respaced steps as for the L_hybrid models"))


# ---------------------------------------------------------------------------------------------
# EDM: github.com/NVlabs/edm README, CC BY-NC-SA 4.0

_EDM = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"
_EDM_SOURCE = "https://github.com/NVlabs/edm#pre-trained-models"
_EDM_LICENSE = "CC BY-NC-SA 4.0"
# EDM README: CIFAR-10 deterministic 18 steps (NFE 35); FFHQ/AFHQv2 deterministic 40 (NFE 79);
# ImageNet stochastic 256 steps with S_churn 40, S_min 0.05, S_max 50, S_noise 1.003
_HEUN18 = {"sampler": "heun", "steps": 18}
_HEUN40 = {"sampler": "heun", "steps": 40}
_EDM_IMAGENET = {"sampler": "stochastic", "steps": 256, "S_churn": 40, "S_min": 0.05, "S_max": 50, "S_noise": 1.003}


def _edm(name, stem, resolution, dataset, recommended, schedule, cond=False, num_classes=0, baseline=False,
         license=_EDM_LICENSE, notes=""):
    url = _EDM + ("baseline/" if baseline else "") + stem + ".pkl"
    register(ZooEntry(
        name=name, family="edm", urls=(url,), filename=stem + ".pkl", license=license, resolution=resolution,
        conditional=cond, num_classes=num_classes if cond else 0, T=1000 if schedule in ("linear", "cosine") else None,
        schedule=schedule, recommended=dict(recommended), dataset=dataset, source=_EDM_SOURCE, notes=notes,
    ))


for _c in ("cond", "uncond"):
    for _a, _arch in (("vp", "DDPM++"), ("ve", "NCSN++")):
        _edm(f"edm-cifar10-{_c}-{_a}", f"edm-cifar10-32x32-{_c}-{_a}", 32, "CIFAR-10", _HEUN18, "edm",
             cond=_c == "cond", num_classes=10, notes=f"EDM config F, {_arch}")
for _d, _dataset in (("ffhq", "FFHQ 64x64"), ("afhqv2", "AFHQv2 64x64")):
    for _a, _arch in (("vp", "DDPM++"), ("ve", "NCSN++")):
        _tag = "ffhq64" if _d == "ffhq" else _d
        _edm(f"edm-{_tag}-uncond-{_a}", f"edm-{_d}-64x64-uncond-{_a}", 64, _dataset, _HEUN40, "edm",
             notes=f"EDM config F, {_arch}")
_edm("edm-imagenet64-cond", "edm-imagenet-64x64-cond-adm", 64, "ImageNet 64x64", _EDM_IMAGENET, "edm",
     cond=True, num_classes=1000, notes="EDM config F, ADM architecture retrained: FID 1.36 with the stochastic "
     "sampler above, NFE 511 (Karras et al. 2022 (EDM), Sec. 5, Fig. 5c)")

# config-A baselines, evaluated with EDM's deterministic sampler in Karras et al. 2022 (EDM), Table 2 (NFE 35 / 79)
_SONG = "CC BY-NC-SA 4.0 (derived from score_sde models shared under Apache-2.0)"
_edm("vp-cifar10", "baseline-cifar10-32x32-uncond-vp", 32, "CIFAR-10", _HEUN18, "vp", baseline=True,
     license=_SONG, notes="score-SDE DDPM++ (VP), converted by EDM; continuous time")
_edm("ve-cifar10", "baseline-cifar10-32x32-uncond-ve", 32, "CIFAR-10", _HEUN18, "ve", baseline=True,
     license=_SONG, notes="score-SDE NCSN++ (VE), converted by EDM; continuous time")
for _d, _tag, _dataset in (("ffhq", "ffhq64", "FFHQ 64x64"), ("afhqv2", "afhqv2", "AFHQv2 64x64")):
    for _a in ("vp", "ve"):
        _edm(f"{_a}-{_tag}", f"baseline-{_d}-64x64-uncond-{_a}", 64, _dataset, _HEUN40, _a, baseline=True,
             notes=f"EDM config A ({_a.upper()} baseline training setup)")
_edm("adm-imagenet64-pkl", "baseline-imagenet-64x64-cond-adm", 64, "ImageNet 64x64",
     {**_EDM_IMAGENET, "S_churn": 80}, "cosine", cond=True, num_classes=1000, baseline=True,
     license="CC BY-NC-SA 4.0 (derived from the MIT-licensed guided-diffusion model)",
     notes="guided-diffusion 64x64_diffusion.pt as an EDM pickle (iDDPM preconditioning); "
           "FID 1.55 with EDM's stochastic sampler, 256 steps, S_churn 80 (Karras et al. 2022 (EDM), Sec. 4, "
           "App. E.2), vs 2.07 with 250 ancestral steps")


# ---------------------------------------------------------------------------------------------
# DDPM-IP: github.com/forever208/DDPM-IP README (repository MIT license); flags of its training
# commands = Ning et al. 2023, Tab. 9. All trained with T=1000, cosine schedule.

_IP_SOURCE = "https://github.com/forever208/DDPM-IP#download-adm-ip-models-and-adm-base-models"
_IP_32 = dict(image_size=32, num_channels=128, num_head_channels=32, num_res_blocks=3, attention_resolutions="16,8",
              dropout=0.3)
_IP_64 = dict(image_size=64, num_channels=192, num_head_channels=64, num_res_blocks=3,
              attention_resolutions="32,16,8", dropout=0.1)
_IP_128 = dict(image_size=128, num_channels=256, num_head_channels=64, num_res_blocks=3,
               attention_resolutions="32,16,8", dropout=0.1)
_IP_COMMON = dict(resblock_updown=True, use_new_attention_order=True, learn_sigma=True, use_scale_shift_norm=True,
                  class_cond=False, use_fp16=False, diffusion_steps=1000, noise_schedule="cosine")


def _ip(name, drive_id, dataset, arch, steps, fid, notes=""):
    flags = {**arch, **_IP_COMMON}
    what = "ADM-IP (input perturbation, gamma 0.1)" if name.startswith("adm-ip") else "ADM baseline"
    register(ZooEntry(
        name=name, family="adm", urls=(f"https://drive.google.com/file/d/{drive_id}/view?usp=sharing",),
        filename=f"{name}.pt", license="MIT", resolution=arch["image_size"], flags=flags, T=1000,
        schedule="cosine", recommended={"sampler": "ancestral", "steps": steps, "variance": "learned"},
        dataset=dataset, source=_IP_SOURCE,
        notes=f"{what}, unconditional: FID {fid} with {steps} ancestral steps, learned variance (Ning et al. 2023, "
              f"Tab. 3){'; ' + notes if notes else ''}",
    ))


_ip("adm-ip-cifar10", "107CyhiRazNZWkksvoyYRLn71Pcs5FOBo", "CIFAR-10", _IP_32, 300, 2.67,
    "the README's training command uses input_pertub 0.15")
_ip("adm-cifar10", "1m-a3WqfpMTibzuTC2om046yWQr20GT0I", "CIFAR-10", _IP_32, 300, 2.95)
_ip("adm-ip-imagenet32", "1FFUJDk-__9y9DnAG6DKDx5W7LgEIuJyk", "ImageNet 32x32 (unconditional)", _IP_32, 300, 2.74)
_ip("adm-ip-lsun-tower", "1QUaY94bSAiTdGu5T_GtdIXMvGT3X1GMy", "LSUN tower 64x64", _IP_64, 300, 2.60)
_ip("adm-lsun-tower", "1_7gLg44qP4v5bgJNvSo65MtXDZ3xXW39", "LSUN tower 64x64", _IP_64, 300, 3.31)
_ip("adm-ip-celeba", "1Us9zKaIMh8dDlAZVXt3hR2FQYwhxEPYk", "CelebA 64x64", _IP_64, 1000, 1.31)
_ip("adm-ip-ffhq128", "1cadXgH2YYVGGi5os-h6oQAp_8XCTURc7", "FFHQ 128x128", _IP_128, 1000, 2.98)
_ip("adm-ffhq128", "1P5Kgyyqp4Zv1RiW116MgBmeX299bGcDw", "FFHQ 128x128", _IP_128, 300, 9.55)


# ---------------------------------------------------------------------------------------------
# latent transformers: DiT (facebookresearch/DiT download.py, CC BY-NC 4.0) and SiT (willisma/SiT
# download.py, MIT). Both sample in the latents of Stable Diffusion's VAE scaled by 0.18215, with
# sample_ddp.py's default VAE sd-vae-ft-ema; labels go with the null label 1000 for guidance.

_DIT_SOURCE = "https://github.com/facebookresearch/DiT#sampling"
_SIT_SOURCE = "https://github.com/willisma/SiT#sampling"
# DiT's sample_ddp.py: create_diffusion("250") (ancestral, learned Sigma), clip_denoised=False, cfg 1.5
_DIT_SAMPLER = {"sampler": "ancestral", "steps": 250, "variance": "learned", "clip_denoised": False}
_DIT_CFG = {"weight": 1.5, "form": "upstream"}
# SiT's sample_ddp.py SDE defaults (train_utils.py parse_sde_args, --num-sampling-steps 250): FID 2.06 with cfg 1.5
_SIT_SAMPLER = {"sampler": "sit_sde", "steps": 250, "sde_method": "Euler", "diffusion_form": "sigma",
                "diffusion_norm": 1.0, "last_step": "Mean", "last_step_size": 0.04}


def _latent_flags(arch: str, resolution: int) -> dict[str, Any]:
    return {"arch": arch, "image_size": resolution, "num_classes": 1000, "autoencoder": "sd-vae-ft-ema",
            "latent_scale": 0.18215}


for _res, _fid in ((256, "2.27 (Peebles & Xie 2023, Tab. 4; 2.21 for the released FP32 PyTorch weights, DiT "
                         "README)"), (512, "3.04 (Peebles & Xie 2023, Tab. 5)")):
    register(ZooEntry(
        name=f"dit-xl-2-{_res}", family="dit", urls=(f"https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-{_res}x{_res}.pt",),
        filename=f"DiT-XL-2-{_res}x{_res}.pt", license="CC BY-NC 4.0", resolution=_res, conditional=True,
        num_classes=1000, flags=_latent_flags("DiT-XL/2", _res), T=1000, schedule="linear",
        recommended=dict(_DIT_SAMPLER), guidance=dict(_DIT_CFG), dataset=f"ImageNet {_res}x{_res}",
        source=_DIT_SOURCE,
        notes=f"DiT-XL/2 in SD-VAE latents ({_res // 8}x{_res // 8}x4, scale 0.18215), learned Sigma: FID-50K {_fid} "
              "with classifier-free guidance 1.5 (channels 0-2, forward_with_cfg), 250 ancestral steps, no clipping, "
              "sd-vae-ft-ema (sample_ddp.py's settings)",
    ))
register(ZooEntry(
    name="sit-xl-2-256", family="sit",
    urls=("https://www.dl.dropboxusercontent.com/scl/fi/as9oeomcbub47de5g4be0/SiT-XL-2-256.pt"
          "?rlkey=uxzxmpicu46coq3msb17b9ofa&dl=0",),
    filename="SiT-XL-2-256x256.pt", license="MIT", resolution=256, conditional=True, num_classes=1000,
    flags=_latent_flags("SiT-XL/2", 256), T=None, schedule="flow", recommended=dict(_SIT_SAMPLER),
    guidance=dict(_DIT_CFG), dataset="ImageNet 256x256", source=_SIT_SOURCE,
    notes="SiT-XL/2, linear interpolant, velocity prediction, same latents as DiT: FID-50K 2.06 (Ma et al. 2024; "
          "SiT README) with guidance 1.5 and the SDE sampler, which the recommended setting is: sit_sde with "
          "sample_ddp.py SDE's defaults (Euler-Maruyama, diffusion_form 'sigma' w_t = sigma_t = 1 - t, "
          "diffusion_norm 1.0, last_step 'Mean' of size 0.04, --num-sampling-steps 250: 249 SDE steps on "
          "t in [0, 0.96] plus the last step, NFE 250; upstream evaluates the network twice per drift, 500 "
          "passes for the same samples). The code does not tie the figure to one mode; the README "
          "and the abstract tie it to the choice of diffusion coefficient, which only the SDE has. sample_ddp.py's "
          "own --cfg-scale default is 1.0: the figure's 1.5 is passed (forward_with_cfg, channels 0-2). ODE mode "
          "(sample_ddp.py ODE: dopri5, atol 1e-6, rtol 1e-3) is sit_ode; the README reports 2.15 when sampling on "
          "TPU against the paper's 2.06",
))


# the models shipped with samplerkit (family "builtin", nothing to download) register themselves from
# samplerkit/builtin.py, which samplerkit imports


# Epsilon Scaling (Ning et al. 2024): the lambda its authors state for these checkpoints, with the
# sampler it was found for. It is opt-in (`--eps-scaler B`), never applied by default.
_ADM_ES = "forever208/ADM-ES README"
_EDM_ES = "forever208/EDM-ES README"
for _name, _b, _rec, _src in (
    ("adm-cifar10", 1.017, {"sampler": "ancestral", "steps": 100}, _ADM_ES),
    ("adm-lsun-tower", 1.006, {"sampler": "ancestral", "steps": 100}, _ADM_ES),
    ("adm-ffhq128", 1.005, {"sampler": "ancestral", "steps": 100}, _ADM_ES),
    ("adm-imagenet64", 1.006, {"sampler": "ancestral", "steps": 100}, _ADM_ES),
    ("adm-imagenet128", 1.004, {"sampler": "ancestral", "steps": 100},
     _ADM_ES + ", classifier-guided: --classifier adm-imagenet128-classifier --classifier-scale 0.5"),
    ("edm-cifar10-cond-vp", 1.0006, {"sampler": "heun", "steps": 18}, _EDM_ES),
    ("edm-cifar10-uncond-vp", 1.0048, {"sampler": "euler", "steps": 13}, _EDM_ES),
):
    register(dataclasses.replace(_REGISTRY[_name], eps_scaler={"b": _b, **_rec, "source": _src}), replace=True)


# ---------------------------------------------------------------------------------------------
# the Stable Diffusion VAEs that latent models decode through (samplerkit.autoencoders.load_vae):
# diffusers folders (config.json + safetensors weights) from huggingface.co/stabilityai, MIT license.
# Each is cached in its own sub-folder; EDM2's latent models use sd-vae-ft-mse, DiT sd-vae-ft-ema or -mse.

_HF = "https://huggingface.co/stabilityai/{}/resolve/main/{}"


def _vae(name, notes):
    register(ZooEntry(
        name=name, family="vae", urls=(_HF.format(name, "diffusion_pytorch_model.safetensors"),),
        filename="diffusion_pytorch_model.safetensors", subdir=name,
        extra_files=(("config.json", _HF.format(name, "config.json")),), license="MIT", resolution=0,
        dataset="LAION subsets (decoder fine-tuning)", source=f"https://huggingface.co/stabilityai/{name}", notes=notes,
    ))


_vae("sd-vae-ft-mse", "Stable Diffusion's KL-f8 autoencoder, decoder fine-tuned with MSE + LPIPS (4 latent "
     "channels, 8x downsampling); EDM2's latent models (Karras et al. 2024) decode through it")
_vae("sd-vae-ft-ema", "Stable Diffusion's KL-f8 autoencoder, decoder fine-tuned with EMA weights (4 latent "
     "channels, 8x downsampling); DiT (Peebles & Xie 2023) samples with it by default")


# ---------------------------------------------------------------------------------------------
# EDM2 (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models") and
# autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself"):
# github.com/NVlabs/edm2, generate_images.py `config_presets`, CC BY-NC-SA 4.0. Post-hoc EMA
# reconstructions named <model>-<training images in thousands>-<EMA length sigma_rel>.pkl.
# ImageNet 512 models are latent (4x64x64, decoded by sd-vae-ft-mse); ImageNet 64 ones pixel-space.
# Every preset samples with Heun, 32 steps (NFE 63), on EDM's grid sigma 0.002-80, rho 7; its figure is
# the one config_presets states (FID or FD_DINOv2 over 50,000 images), for the EMA length chosen for it.

_EDM2 = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/"
_EDM2_SOURCE = "https://github.com/NVlabs/edm2#pre-trained-models"
_EDM2_SAMPLER = {"sampler": "heun", "steps": 32, "disc": "edm", "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}

# preset: (net file stem, gnet file stem or None, guidance weight, metric, published figure)
EDM2_PRESETS: dict[str, tuple[str, str | None, float, str, float]] = {
    "edm2-img512-xs-fid": ("edm2-img512-xs-2147483-0.135", None, 1.0, "FID", 3.53),
    "edm2-img512-xs-dino": ("edm2-img512-xs-2147483-0.200", None, 1.0, "FD_DINOv2", 103.39),
    "edm2-img512-s-fid": ("edm2-img512-s-2147483-0.130", None, 1.0, "FID", 2.56),
    "edm2-img512-s-dino": ("edm2-img512-s-2147483-0.190", None, 1.0, "FD_DINOv2", 68.64),
    "edm2-img512-m-fid": ("edm2-img512-m-2147483-0.100", None, 1.0, "FID", 2.25),
    "edm2-img512-m-dino": ("edm2-img512-m-2147483-0.155", None, 1.0, "FD_DINOv2", 58.44),
    "edm2-img512-l-fid": ("edm2-img512-l-1879048-0.085", None, 1.0, "FID", 2.06),
    "edm2-img512-l-dino": ("edm2-img512-l-1879048-0.155", None, 1.0, "FD_DINOv2", 52.25),
    "edm2-img512-xl-fid": ("edm2-img512-xl-1342177-0.085", None, 1.0, "FID", 1.96),
    "edm2-img512-xl-dino": ("edm2-img512-xl-1342177-0.155", None, 1.0, "FD_DINOv2", 45.96),
    "edm2-img512-xxl-fid": ("edm2-img512-xxl-0939524-0.070", None, 1.0, "FID", 1.91),
    "edm2-img512-xxl-dino": ("edm2-img512-xxl-0939524-0.150", None, 1.0, "FD_DINOv2", 42.84),
    "edm2-img64-s-fid": ("edm2-img64-s-1073741-0.075", None, 1.0, "FID", 1.58),
    "edm2-img64-m-fid": ("edm2-img64-m-2147483-0.060", None, 1.0, "FID", 1.43),
    "edm2-img64-l-fid": ("edm2-img64-l-1073741-0.040", None, 1.0, "FID", 1.33),
    "edm2-img64-xl-fid": ("edm2-img64-xl-0671088-0.040", None, 1.0, "FID", 1.33),
    "edm2-img512-xs-guid-fid": ("edm2-img512-xs-2147483-0.045", "edm2-img512-xs-uncond-2147483-0.045", 1.40, "FID",
                                2.91),
    "edm2-img512-xs-guid-dino": ("edm2-img512-xs-2147483-0.150", "edm2-img512-xs-uncond-2147483-0.150", 1.70,
                                 "FD_DINOv2", 79.94),
    "edm2-img512-s-guid-fid": ("edm2-img512-s-2147483-0.025", "edm2-img512-xs-uncond-2147483-0.025", 1.40, "FID", 2.23),
    "edm2-img512-s-guid-dino": ("edm2-img512-s-2147483-0.085", "edm2-img512-xs-uncond-2147483-0.085", 1.90,
                                "FD_DINOv2", 52.32),
    "edm2-img512-m-guid-fid": ("edm2-img512-m-2147483-0.030", "edm2-img512-xs-uncond-2147483-0.030", 1.20, "FID", 2.01),
    "edm2-img512-m-guid-dino": ("edm2-img512-m-2147483-0.015", "edm2-img512-xs-uncond-2147483-0.015", 2.00,
                                "FD_DINOv2", 41.98),
    "edm2-img512-l-guid-fid": ("edm2-img512-l-1879048-0.015", "edm2-img512-xs-uncond-2147483-0.015", 1.20, "FID", 1.88),
    "edm2-img512-l-guid-dino": ("edm2-img512-l-1879048-0.035", "edm2-img512-xs-uncond-2147483-0.035", 1.70,
                                "FD_DINOv2", 38.20),
    "edm2-img512-xl-guid-fid": ("edm2-img512-xl-1342177-0.020", "edm2-img512-xs-uncond-2147483-0.020", 1.20, "FID",
                                1.85),
    "edm2-img512-xl-guid-dino": ("edm2-img512-xl-1342177-0.030", "edm2-img512-xs-uncond-2147483-0.030", 1.70,
                                 "FD_DINOv2", 35.67),
    "edm2-img512-xxl-guid-fid": ("edm2-img512-xxl-0939524-0.015", "edm2-img512-xs-uncond-2147483-0.015", 1.20, "FID",
                                 1.81),
    "edm2-img512-xxl-guid-dino": ("edm2-img512-xxl-0939524-0.015", "edm2-img512-xs-uncond-2147483-0.015", 1.70,
                                  "FD_DINOv2", 33.09),
    "edm2-img512-s-autog-fid": ("edm2-img512-s-2147483-0.070", "edm2-img512-xs-0134217-0.125", 2.10, "FID", 1.34),
    "edm2-img512-s-autog-dino": ("edm2-img512-s-2147483-0.120", "edm2-img512-xs-0134217-0.165", 2.45, "FD_DINOv2",
                                 36.67),
    "edm2-img512-xxl-autog-fid": ("edm2-img512-xxl-0939524-0.075", "edm2-img512-m-0268435-0.155", 2.05, "FID", 1.25),
    "edm2-img512-xxl-autog-dino": ("edm2-img512-xxl-0939524-0.130", "edm2-img512-m-0268435-0.205", 2.30, "FD_DINOv2",
                                   24.18),
    "edm2-img512-s-uncond-autog-fid": ("edm2-img512-s-uncond-2147483-0.070", "edm2-img512-xs-uncond-0134217-0.110",
                                       2.85, "FID", 3.86),
    "edm2-img512-s-uncond-autog-dino": ("edm2-img512-s-uncond-2147483-0.090", "edm2-img512-xs-uncond-0134217-0.125",
                                        2.90, "FD_DINOv2", 90.39),
    "edm2-img64-s-autog-fid": ("edm2-img64-s-1073741-0.045", "edm2-img64-xs-0134217-0.110", 1.70, "FID", 1.01),
    "edm2-img64-s-autog-dino": ("edm2-img64-s-1073741-0.105", "edm2-img64-xs-0134217-0.175", 2.20, "FD_DINOv2", 31.85),
}


def _edm2_meta(stem: str) -> dict:
    """Resolution, conditioning and dataset of an EDM2 file from its name."""
    resolution = 512 if stem.startswith("edm2-img512") else 64
    cond = "-uncond-" not in stem
    return dict(resolution=resolution, conditional=cond, num_classes=1000 if cond else 0,
                dataset=f"ImageNet {resolution}x{resolution}" + ("" if cond else " (trained without labels)"))


def _edm2_file(stem: str, notes: str) -> None:
    register(ZooEntry(
        name=stem, family="edm2", urls=(_EDM2 + stem + ".pkl",), filename=stem + ".pkl", license=_EDM_LICENSE,
        recommended=dict(_EDM2_SAMPLER), source=_EDM2_SOURCE, notes=notes, **_edm2_meta(stem)))


def _edm2_presets() -> None:
    uses: dict[str, list[str]] = {}
    for preset, (net, gnet, _w, _metric, _figure) in EDM2_PRESETS.items():
        uses.setdefault(net, []).append(f"net of {preset}")
        if gnet:
            uses.setdefault(gnet, []).append(f"gnet of {preset}")
    for stem, roles in uses.items():
        _edm2_file(stem, "EDM2 post-hoc EMA reconstruction; " + "; ".join(roles))
    for preset, (net, gnet, weight, metric, figure) in EDM2_PRESETS.items():
        how = ("unguided" if gnet is None else
               f"{'autoguidance' if 'autog' in preset else 'classifier-free guidance'} by {gnet}, weight {weight}")
        register(dataclasses.replace(
            _REGISTRY[net], name=preset, guidance={"gnet": gnet, "weight": weight} if gnet else {},
            notes=f"EDM2 preset {preset}: {net} {how}; {metric} {figure} with Heun 32 steps (NFE 63 per network), "
                  "sigma 0.002-80, rho 7 (NVlabs/edm2 generate_images.py config_presets; Karras et al. 2024)"))


_edm2_presets()
# the sizes by name, as the unguided FID presets pick them (edm2-img64-xs: the shorter-trained XS that
# guides S in edm2-img64-s-autog-fid; no unguided img64-xs is published)
for _size in ("xs", "s", "m", "l", "xl", "xxl"):
    register(dataclasses.replace(_REGISTRY[f"edm2-img512-{_size}-fid"], name=f"edm2-img512-{_size}", guidance={},
                                 notes=f"= edm2-img512-{_size}-fid: " + _REGISTRY[f"edm2-img512-{_size}-fid"].notes))
for _size in ("s", "m", "l", "xl"):
    register(dataclasses.replace(_REGISTRY[f"edm2-img64-{_size}-fid"], name=f"edm2-img64-{_size}", guidance={},
                                 notes=f"= edm2-img64-{_size}-fid: " + _REGISTRY[f"edm2-img64-{_size}-fid"].notes))
register(dataclasses.replace(_REGISTRY["edm2-img64-xs-0134217-0.110"], name="edm2-img64-xs",
                             notes="= edm2-img64-xs-0134217-0.110, the guiding network of edm2-img64-s-autog-fid "
                                   "(XS trained on 134M images, EMA length 0.110)"))
