"""Between model space and pixels: what turns a sampler's output into uint8 images.

Every denoiser's output lives in *model space*; an :class:`Autoencoder` maps it to uint8 RGB
``[B, 3, H, W]`` (:meth:`Autoencoder.decode`) and, where that is defined, pixels back to model
space (:meth:`Autoencoder.encode`). :func:`decode` uses the model's ``autoencoder`` attribute, or
:class:`RGBIdentity` when it has none, so pixel models need nothing.

* :class:`RGBIdentity` -- pixel models, data in [-1, 1]: ``(x * 127.5 + 128).clip(0, 255)`` as
  EDM's and EDM2's generators round (EDM2's ``StandardRGBEncoder``).
* :class:`StabilityVAE` -- the latent models of Karras et al. 2024 (EDM2): the Stable Diffusion
  VAE's latents whitened per channel, ``z = raw * scale + bias`` with scale = final_std / raw_std
  and bias = final_mean - raw_mean * scale (EDM2's ``StabilityVAEEncoder``). EDM2 feeds the VAE
  pixels in [0, 1] (not [-1, 1]) and reads its output back in [0, 1].
* :class:`ScaledVAE` -- latents scaled by one constant, 0.18215 for the Stable Diffusion VAE as
  DiT uses it (Peebles & Xie 2023): the VAE works in [-1, 1].

The VAE itself is diffusers' ``AutoencoderKL`` (``pip install "samplerkit[latent]"``), loaded by
:func:`load_vae` from a local diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)
or from a zoo name (``sd-vae-ft-mse``, ``sd-vae-ft-ema``) whose two files samplerkit's own
downloader fetches and verifies; no hub client runs, and offline works from the cache.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import download, zoo
from .data import to_uint8
from .errors import SamplerkitError

LATENT_EXTRA = 'pip install "samplerkit[latent]"'
VAE_CONFIG = "config.json"
VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"
# EDM2's StabilityVAEEncoder defaults: statistics of the raw sd-vae-ft-mse latents of ImageNet 512
EDM2_RAW_MEAN = (5.81, 3.25, 0.12, -2.15)
EDM2_RAW_STD = (4.17, 4.62, 3.71, 3.28)
DIT_LATENT_SCALE = 0.18215


def _diffusers():
    """The diffusers module, or a one-line error saying how to install it."""
    try:
        return importlib.import_module("diffusers")
    except ImportError:
        raise SamplerkitError(f"latent models need diffusers and safetensors; {LATENT_EXTRA}") from None


class VAE:
    """A diffusers ``AutoencoderKL`` with where its weights came from (``name``, ``source``, ``sha256``).

    :meth:`decode` / :meth:`encode` take and return the VAE's own pixel range; the autoencoders
    below decide what that range is. The module follows the input to its device.
    """

    def __init__(self, model, name: str = "AutoencoderKL", source: str = "", sha256: str | None = None):
        self.model = model.eval().requires_grad_(False)
        self.name, self.source, self.sha256 = name, source, sha256

    def _on(self, x: torch.Tensor):
        if next(self.model.parameters()).device != x.device:
            self.model.to(x.device)
        return self.model

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels (float32, the VAE's range)."""
        return self._on(z).decode(z.to(torch.float32)).sample

    @torch.no_grad()
    def encode(self, x: torch.Tensor):
        """Pixels (the VAE's range) -> the latent distribution (``.mean``, ``.std``, ``.sample()``)."""
        return self._on(x).encode(x.to(torch.float32)).latent_dist

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "sha256": self.sha256}


def _folder_of(name_or_dir: str | Path) -> tuple[Path, str, str, str | None]:
    """(folder, name, source, sha256) of a local diffusers folder or a zoo VAE (downloaded, cached)."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        weights = path / VAE_WEIGHTS
        if not (path / VAE_CONFIG).is_file() or not weights.is_file():
            raise SamplerkitError(f"{path} is not a diffusers VAE folder: it needs {VAE_CONFIG} and {VAE_WEIGHTS}")
        return path, path.name, str(path.resolve()), download.sha256_file(weights)
    name = str(name_or_dir)
    name = name.removeprefix("stabilityai/")  # EDM2 pickles name the VAE by its hub id
    entry = zoo.get(name)
    if entry.family != "vae":
        raise SamplerkitError(f"{name} is a {entry.family} model, not a VAE; use sd-vae-ft-mse, sd-vae-ft-ema "
                              "or a local diffusers folder")
    weights = entry.download()
    return weights.parent, entry.name, entry.urls[0], entry.expected_sha256()


def load_vae(name_or_dir: str | Path, device: Any = "cpu") -> VAE:
    """The ``AutoencoderKL`` of a zoo name (``sd-vae-ft-mse``, ``sd-vae-ft-ema``; EDM2's
    ``stabilityai/sd-vae-ft-mse`` works too) or of a local diffusers folder, in float32, eval mode.

    Only the safetensors weights are read (never a pickled ``.bin``); no hub client runs.
    """
    diffusers = _diffusers()
    folder, name, source, sha256 = _folder_of(name_or_dir)
    try:
        model = diffusers.AutoencoderKL.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        detail = " ".join(str(err).split())[:200]
        raise SamplerkitError(f"cannot load the VAE in {folder}: {detail}") from None
    if sha256 is None and not Path(name_or_dir).expanduser().is_dir():
        sha256 = download.trust(folder / VAE_WEIGHTS)  # a zoo file that loaded: its digest becomes trusted
    return VAE(model.to(device, torch.float32), name=name, source=source, sha256=sha256)


# ---------------------------------------------------------------------------------------------


class Autoencoder:
    """Model space <-> uint8 pixels. ``name`` names the mapping and ``describe()`` what a manifest
    records about it (the VAE's name, source and sha256 where there is one)."""

    name: str = ""
    latent_channels: int = 3  # channels of model space
    downsample: int = 1  # pixel resolution / model-space resolution

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space ``[B, C, h, w]`` -> uint8 RGB ``[B, 3, H, W]`` on ``x``'s device."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor, randn_like=torch.randn_like) -> torch.Tensor:
        """uint8 RGB ``[B, 3, H, W]`` -> model space (latent models draw their noise through ``randn_like``)."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise a one-line :class:`SamplerkitError` now if :meth:`decode` cannot run (missing extra)."""

    def describe(self) -> dict:
        return {"name": self.name}


class RGBIdentity(Autoencoder):
    """Pixel models: model space is RGB in [-1, 1]; decode rounds as ``samplerkit.data.to_uint8``."""

    name = "rgb"

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2).to(x.device)

    def encode(self, images: torch.Tensor, randn_like=torch.randn_like) -> torch.Tensor:
        return images.to(torch.float32) / 127.5 - 1


class _VAEBacked(Autoencoder):
    """An autoencoder over a :class:`VAE`, given or named (a zoo name or folder, loaded at first use)."""

    latent_channels, downsample = 4, 8

    def __init__(self, vae: VAE | Any, batch_size: int = 8):
        if isinstance(vae, (str, Path)):
            self._vae, self.vae_name = None, str(vae)
        else:
            self._vae = vae if isinstance(vae, VAE) else VAE(vae)
            self.vae_name = self._vae.name
        self.batch_size = int(batch_size)

    @property
    def vae(self) -> VAE:
        if self._vae is None:
            self._vae = load_vae(self.vae_name)
        return self._vae

    def check(self) -> None:
        _diffusers()

    def describe(self) -> dict:
        vae = self._vae.describe() if self._vae is not None else {"name": self.vae_name, "source": "", "sha256": None}
        return {"name": self.name, "vae": vae}

    def _decode_batches(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.vae.decode(batch) for batch in z.split(self.batch_size)])


class StabilityVAE(_VAEBacked):
    """EDM2's latent space (Karras et al. 2024 (EDM2), App. B.1): z = raw * scale + bias per channel
    with scale = final_std / raw_std, bias = final_mean - raw_mean * scale (float32 as EDM2), the VAE
    working in [0, 1] pixels. Decoding runs the VAE on ``batch_size`` latents at a time, as EDM2 does.
    """

    name = "stability-vae"

    def __init__(self, vae, raw_mean=EDM2_RAW_MEAN, raw_std=EDM2_RAW_STD, final_mean=0.0, final_std=0.5,
                 batch_size: int = 8):
        super().__init__(vae, batch_size)
        self.scale = np.float32(final_std) / np.asarray(raw_std, dtype=np.float32)
        self.bias = np.float32(final_mean) - np.asarray(raw_mean, dtype=np.float32) * self.scale

    @classmethod
    def from_scale_bias(cls, vae, scale, bias, batch_size: int = 8) -> StabilityVAE:
        """From the per-channel ``scale`` and ``bias`` themselves (what an EDM2 pickle stores)."""
        ae = cls(vae, batch_size=batch_size)
        ae.scale = np.asarray(scale, dtype=np.float32).reshape(-1)
        ae.bias = np.asarray(bias, dtype=np.float32).reshape(-1)
        if ae.scale.shape != ae.bias.shape or not np.all(np.isfinite(ae.scale)) or np.any(ae.scale == 0):
            raise SamplerkitError("the latent scale and bias must be finite per-channel arrays of one shape, "
                                  "scale nonzero")
        return ae

    def _channel(self, values: np.ndarray, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(values, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        z = (x - self._channel(self.bias, x)) / self._channel(self.scale, x)
        return self._decode_batches(z).clamp(0, 1).mul(255).to(torch.uint8)

    def encode(self, images: torch.Tensor, randn_like=torch.randn_like) -> torch.Tensor:
        """EDM2's encode: the VAE's posterior mean + std * noise, then scale and bias."""
        x = images.to(torch.float32) / 255
        dists = [self.vae.encode(batch) for batch in x.split(self.batch_size)]
        mean, std = torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])
        z = mean + randn_like(mean) * std
        return z * self._channel(self.scale, z) + self._channel(self.bias, z)

    def describe(self) -> dict:
        return {**super().describe(), "scale": self.scale.tolist(), "bias": self.bias.tolist()}


class ScaledVAE(_VAEBacked):
    """z = scale * VAE latent with the VAE in [-1, 1] pixels, as DiT (Peebles & Xie 2023) samples:
    decode = clamp(127.5 * VAE.decode(z / scale) + 128, 0, 255) -> uint8."""

    name = "scaled-vae"

    def __init__(self, vae, scale: float = DIT_LATENT_SCALE, batch_size: int = 8):
        super().__init__(vae, batch_size)
        self.scale = float(scale)
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise SamplerkitError(f"the latent scale must be a positive number, got {scale!r}")

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        pixels = self._decode_batches(x.to(torch.float32) / self.scale)
        return torch.clamp(127.5 * pixels + 128.0, 0, 255).to(torch.uint8)

    def encode(self, images: torch.Tensor, randn_like=torch.randn_like) -> torch.Tensor:
        """The VAE's posterior mean + std * noise, times ``scale`` (DiT's training transform)."""
        x = images.to(torch.float32) / 127.5 - 1
        dists = [self.vae.encode(batch) for batch in x.split(self.batch_size)]
        mean, std = torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])
        return (mean + randn_like(mean) * std) * self.scale

    def describe(self) -> dict:
        return {**super().describe(), "scale": self.scale}


# ---------------------------------------------------------------------------------------------


def autoencoder_of(net) -> Autoencoder:
    """``net``'s autoencoder, looked up through its wrappers (guidance, remedies); RGB if none."""
    seen = 0
    while net is not None and seen < 64:
        ae = getattr(net, "autoencoder", None)
        if ae is not None:
            return ae
        net, seen = getattr(net, "inner", None), seen + 1
    return RGBIdentity()


def decode(net, x: torch.Tensor) -> torch.Tensor:
    """A sampler's output ``x`` of model ``net`` as uint8 RGB ``[B, 3, H, W]``: through
    ``net.autoencoder`` (a latent model), else :class:`RGBIdentity`."""
    return autoencoder_of(net).decode(x)
