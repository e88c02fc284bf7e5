"""Classifier guidance (Dhariwal & Nichol 2021): upstream sampling loops, the sigma-space form, errors.

``tests/fixtures/guidance_upstream_outputs.pt`` ("guided") holds samples of guided-diffusion's own
``p_sample_loop`` / ``ddim_sample_loop`` (gaussian_diffusion.py + respace.py at
openai/guided-diffusion 22e0df8, CPU, float32) with the ``cond_fn`` of
``scripts/classifier_sample.py`` (grad of log_softmax[y] times the scale), clip_denoised=True, on
tiny random-weight networks: base UNet weights ``random_state_dict(template, seed)``, classifier
weights ``random_state_dict(template, classifier_seed)`` (test_adapter_adm.py). From
``torch.Generator().manual_seed(seed)`` the script drew the latents [3, 3, 32, 32], then the
per-step noise [steps, 3, 3, 32, 32] that ``torch.randn_like`` returned in step order. The script
is kept outside the repository.

The sigma-space form is checked on an exact test bed: a mixture of isotropic Gaussians, whose
ideal denoiser and class posterior p(k | x; sigma) are closed forms.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from samplerkit.adapters import adm
from samplerkit.adapters import classifier as C
from test_adapter_adm import random_state_dict, template_of

import samplerkit as sk
from samplerkit.denoisers import Denoiser, _per_sample

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def upstream():
    return torch.load(FIXTURES / "guidance_upstream_outputs.pt", weights_only=True)["guided"]


@pytest.fixture(scope="module")
def classifier(upstream, tmp_path_factory):
    f = upstream["classifier_flags"]
    path = tmp_path_factory.mktemp("clf") / "clf.pt"
    torch.save(random_state_dict(template_of(C.create_classifier, **f), int(upstream["classifier_seed"])), path)
    return sk.load(path, family="adm-classifier", **f)


def base_model(run: dict, tmp_path: Path):
    flags = dict(run["flags"])
    diffusion = {k: flags.pop(k) for k in ("diffusion_steps", "noise_schedule")}
    if run["class_cond"]:
        flags.update(class_cond=True, num_classes=10)
    path = tmp_path / "model.pt"
    torch.save(random_state_dict(template_of(adm.create_unet, **flags), int(run["seed"])), path)
    return sk.load(path, family="adm", **flags, **diffusion)


def latents_and_noise(run: dict):
    g = torch.Generator().manual_seed(int(run["seed"]))
    latents = torch.randn(3, 3, 32, 32, generator=g)
    noise = iter(torch.randn(int(run["steps"]), 3, 3, 32, 32, generator=g))
    return latents, lambda x: next(noise).to(x.dtype)


@pytest.mark.parametrize("name,variance", [("ancestral", "learned"), ("ancestral_fixedlarge", "fixedlarge"),
                                           ("ancestral_fixedsmall", "fixedsmall")])
def test_upstream_form_ancestral_equals_guided_diffusions_p_sample_loop(upstream, classifier, tmp_path, name,
                                                                        variance):
    """condition_mean: mu + s Sigma grad log p (Dhariwal & Nichol 2021, Alg. 1); with fixedsmall, Sigma is
    beta~ itself (0 at the last step), not the clipped exp(log beta~) that draws the noise."""
    run = upstream["runs"][name]
    net = sk.guidance.classifier_guided(base_model(run, tmp_path), classifier, scale=float(run["scale"]),
                                        form="upstream")
    latents, randn_like = latents_and_noise(run)
    steps = sk.schedules.respace(1000, run["respacing"])
    x = sk.samplers.ancestral(net, latents, steps, run["y"], variance=variance, randn_like=randn_like)
    assert (x - run["sample"]).abs().max() <= 1e-4


def test_upstream_form_ddim_equals_guided_diffusions_ddim_sample_loop(upstream, classifier, tmp_path):
    """condition_score: eps - sqrt(1 - abar) grad log p after clipping x0 (Dhariwal & Nichol 2021, Alg. 2);
    a class-conditional base model, which gets the labels too."""
    run = upstream["runs"]["ddim"]
    net = sk.guidance.classifier_guided(base_model(run, tmp_path), classifier, scale=float(run["scale"]),
                                        form="upstream")
    latents, randn_like = latents_and_noise(run)
    x = sk.samplers.ddim(net, latents, sk.schedules.respace(1000, run["respacing"]), run["y"], randn_like=randn_like)
    assert (x - run["sample"]).abs().max() <= 1e-4


def test_guidance_changes_the_upstream_samples(upstream, classifier, tmp_path):
    """The comparison above can fail: scale 0 (no guidance) lands far from the guided samples."""
    run = upstream["runs"]["ddim"]
    net = sk.guidance.classifier_guided(base_model(run, tmp_path), classifier, scale=0.0, form="upstream")
    latents, randn_like = latents_and_noise(run)
    x = sk.samplers.ddim(net, latents, sk.schedules.respace(1000, run["respacing"]), run["y"], randn_like=randn_like)
    assert (x - run["sample"]).abs().max() > 1e-2


def test_score_form_is_condition_score_without_clipping(upstream, classifier, tmp_path):
    """D + s sigma^2 grad_x log p and eps - sqrt(1 - abar) grad_{x_t} log p are the same step when x0 is
    not clipped between them (the chain rule of samplerkit.guidance)."""
    run = upstream["runs"]["ddim"]
    base = base_model(run, tmp_path)
    steps = sk.schedules.respace(1000, "ddim5")
    latents, _ = latents_and_noise(run)
    out = {}
    for form in ("score", "upstream"):
        net = sk.guidance.classifier_guided(base, classifier, scale=2.0, form=form)
        out[form] = sk.samplers.ddim(net, latents, steps, run["y"], clip_denoised=False)
    assert (out["score"] - out["upstream"]).abs().max() <= 1e-9 * out["score"].abs().max()


# ---------------------------------------------------------------------------------------------
# the exact test bed: y ~ sum_k w_k N(mu_k, s_k^2 I)


class MixtureDenoiser(Denoiser):
    """Ideal denoiser of the mixture: sum_k p(k | x; sigma) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k))."""

    def __init__(self, means, stds, weights, class_labels_select: bool = False):
        super().__init__()
        self.means, self.stds = torch.as_tensor(means, dtype=torch.float64), torch.as_tensor(stds, dtype=torch.float64)
        self.log_w = torch.as_tensor(weights, dtype=torch.float64).log()
        self.img_channels, self.img_resolution = self.means.shape[1], self.means.shape[-1]
        self.sigma_min, self.sigma_max = 0.0, float("inf")
        self.label_dim = self.means.shape[0] if class_labels_select else 0

    def posterior(self, x, sigma) -> torch.Tensor:
        """p(k | x; sigma) [B, K]."""
        var = self.stds[None] ** 2 + _per_sample(sigma, x).flatten()[:, None] ** 2  # [B, K]
        d2 = ((x.to(torch.float64)[:, None] - self.means[None]) ** 2).flatten(2).sum(-1)
        dim = x[0].numel()
        return torch.softmax(self.log_w[None] - d2 / (2 * var) - dim / 2 * var.log(), dim=1)

    def forward(self, x, sigma, class_labels=None):
        s = _per_sample(sigma, x)[:, None]  # [B, 1, 1, 1, 1]
        var = (self.stds**2).reshape(1, -1, 1, 1, 1)
        each = self.means[None] + var / (var + s**2) * (x.to(torch.float64)[:, None] - self.means[None])
        if self.label_dim:  # the conditional model: the component of the given class
            return each[torch.arange(x.shape[0]), torch.as_tensor(class_labels)]
        return (self.posterior(x, sigma)[:, :, None, None, None] * each).sum(1)


class MixtureClassifier(torch.nn.Module):
    """log p(k | x_t; sigma) of the mixture: ``timestep(sigma)`` returns sigma itself, and the
    classifier maps x_t back to x = x_t sqrt(1 + sigma^2) (its "timestep" is the noise level)."""

    def __init__(self, mixture: MixtureDenoiser):
        super().__init__()
        self.mixture = mixture
        self.num_classes, self.image_size, self.in_channels = mixture.means.shape[0], mixture.img_resolution, 3

    def timestep(self, sigma):
        return torch.as_tensor(sigma, dtype=torch.float64).flatten()

    def forward(self, x_t, sigma):
        x = x_t * (1 + _per_sample(sigma, x_t) ** 2).sqrt()
        return self.mixture.posterior(x, sigma).log()


def mixture(conditional: bool = False) -> MixtureDenoiser:
    shape = (3, 2, 2)  # small and overlapping: classes stay uncertain until sigma is small
    means = torch.stack([torch.full(shape, 0.2), torch.full(shape, -0.2), torch.linspace(-0.3, 0.3, 12).reshape(shape)])
    return MixtureDenoiser(means, [0.5, 0.45, 0.55], [0.5, 0.3, 0.2], conditional)


def grad_log_posterior(m: MixtureDenoiser, x, sigma: float, k: torch.Tensor) -> torch.Tensor:
    """Closed form of grad_x log p(k | x; sigma) = -(x - mu_k)/v_k + sum_j p(j | x)(x - mu_j)/v_j,
    v_j = s_j^2 + sigma^2."""
    v = (m.stds**2 + sigma**2).reshape(1, -1, 1, 1, 1)
    score_j = -(x[:, None] - m.means[None]) / v  # grad_x log N(x; mu_j, v_j I)
    p = m.posterior(x, torch.full((x.shape[0],), sigma, dtype=torch.float64))[:, :, None, None, None]
    return score_j[torch.arange(x.shape[0]), k] - (p * score_j).sum(1)


@pytest.mark.parametrize("sigma", [0.05, 0.7, 3.0, 20.0])
def test_guided_shift_is_s_sigma2_grad_log_p_in_closed_form(sigma):
    m = mixture()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * (0.3 + sigma)
    k = torch.tensor([0, 1, 2, 1])
    s = 2.5
    guided = sk.guidance.classifier_guided(m, MixtureClassifier(m), scale=s)
    sig = torch.full((4,), sigma, dtype=torch.float64)
    shift = guided(x, sig, k) - m(x, sig)
    expected = s * sigma**2 * grad_log_posterior(m, x, sigma, k)
    assert (shift - expected).abs().max() <= 1e-10 * (1 + expected.abs().max())


def test_scale_one_turns_the_mixture_into_its_class_component():
    """Tweedie: E[y | x, k] = x + sigma^2 (grad log p(x) + grad log p(k | x)), so guiding the mixture's
    ideal denoiser at s = 1 gives the ideal denoiser of component k exactly."""
    m, m_k = mixture(), mixture(conditional=True)
    x = torch.randn(3, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    k, sig = torch.tensor([2, 0, 1]), torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    guided = sk.guidance.classifier_guided(m, MixtureClassifier(m), scale=1.0)
    assert (guided(x, sig, k) - m_k(x, sig, k)).abs().max() <= 1e-10


def test_cross_entropy_of_heun_samples_falls_as_the_scale_grows():
    m = mixture()
    clf = MixtureClassifier(m)
    latents = torch.randn(48, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    y = torch.arange(48) % 3
    sigmas = sk.schedules.edm(12, sigma_min=0.002, sigma_max=40.0)
    ce = []
    for s in (0.0, 0.5, 1.0, 2.0, 4.0):
        x = sk.samplers.heun(sk.guidance.classifier_guided(m, clf, scale=s), latents, sigmas, y)
        log_p = clf(x, torch.zeros(48, dtype=torch.float64))
        ce.append(float(-log_p[torch.arange(48), y].mean()))
    assert all(b < a for a, b in zip(ce, ce[1:], strict=False)), ce
    assert ce[-1] < 0.2 * ce[0], ce


def test_score_form_runs_on_every_sampler():
    m = mixture()
    guided = sk.guidance.classifier_guided(m, MixtureClassifier(m), scale=1.0)
    latents = torch.randn(3, 3, 2, 2, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2])
    for name, row in sk.samplers.SAMPLERS.items():
        if name in sk.samplers.FLOW_SAMPLERS:  # SiT's samplers: flow models only (tests/test_sit_samplers.py)
            continue
        x = row.fn(guided, latents, sk.schedules.edm(4, sigma_min=0.01, sigma_max=10.0), y)
        x0 = row.fn(m, latents, sk.schedules.edm(4, sigma_min=0.01, sigma_max=10.0))
        assert torch.isfinite(x).all() and (x - x0).abs().max() > 1e-3, name


# ---------------------------------------------------------------------------------------------
# errors


def test_upstream_form_on_a_sigma_space_sampler_is_refused():
    m = mixture()
    guided = sk.guidance.classifier_guided(m, MixtureClassifier(m), scale=1.0, form="upstream")
    with pytest.raises(sk.SamplerkitError, match="applied by the ddim and ancestral samplers only"):
        sk.samplers.heun(guided, torch.randn(1, 3, 2, 2), 3, torch.tensor([0]))


def test_negative_scale_is_refused():
    m = mixture()
    with pytest.raises(sk.SamplerkitError, match="classifier scale must be >= 0, got -1.0"):
        sk.guidance.classifier_guided(m, MixtureClassifier(m), scale=-1)


def test_classifier_of_another_resolution_is_refused(classifier):
    m = mixture()  # 2 px; the classifier is for 32 px
    with pytest.raises(sk.SamplerkitError, match="classifier is for 32x32 images but the model makes 2x2"):
        sk.guidance.classifier_guided(m, classifier, scale=1.0)


def test_classifier_with_another_class_count_is_refused(classifier, upstream, tmp_path):
    run = dict(upstream["runs"]["ddim"])
    flags = dict(run["flags"])
    flags.pop("diffusion_steps"), flags.pop("noise_schedule")
    flags.update(class_cond=True, num_classes=12)
    path = tmp_path / "m.pt"
    torch.save(random_state_dict(template_of(adm.create_unet, **flags), 0), path)
    net = sk.load(path, family="adm", **flags)
    with pytest.raises(sk.SamplerkitError, match="classifier has 10 classes but the model has 12"):
        sk.guidance.classifier_guided(net, classifier, scale=1.0)


def test_labels_are_required_for_guidance():
    m = mixture()
    guided = sk.guidance.classifier_guided(m, MixtureClassifier(m), scale=1.0)
    with pytest.raises(sk.SamplerkitError, match="class-conditional .*3 classes.*pass class labels"):
        guided(torch.randn(1, 3, 2, 2), torch.tensor([1.0]))
    assert guided.label_dim == 3 and m.label_dim == 0
    assert math.isfinite(float(guided(torch.randn(1, 3, 2, 2), torch.tensor([1.0]), torch.tensor([2])).sum()))


# ---------------------------------------------------------------------------------------------
# `samplerkit sample --classifier ...`


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from test_superres import tiny_models

    return tiny_models(tmp_path_factory.mktemp("models"))


def _cli(*args):
    from test_cli_sample import _cli as run

    return run(*args, "--device", "cpu", "--quiet", "--speed", "exact")


def test_guided_run_records_the_classifier_its_sha256_and_the_scale(models, tmp_path):
    import json

    args = ["sample", "--model", str(models["base"]), "--classifier", str(models["classifier"]), "--class-labels",
            "random", "--sampler", "ancestral", "--steps", "3", "--seeds", "0-2"]
    assert _cli(*args, "--classifier-scale", "3", "--guidance-form", "upstream", "--out", str(tmp_path / "g"))[0] == 0
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["classifier"] == str(models["classifier"]) and manifest["classifier_scale"] == 3.0
    assert manifest["classifier_sha256"] == sk.output.file_sha256(models["classifier"])
    assert manifest["guidance_form"] == "upstream" and len(manifest["labels"]) == 3
    assert _cli(*args, "--classifier-scale", "0", "--out", str(tmp_path / "s0"))[0] == 0
    images = [(tmp_path / d / "000000" / "000000.png").read_bytes() for d in ("g", "s0")]
    assert images[0] != images[1]


@pytest.mark.parametrize("extra,message", [
    (["--classifier-scale", "-1"], "--classifier-scale must be >= 0, got -1"),
    (["--sampler", "heun", "--guidance-form", "upstream"], "applied by the ddim and ancestral samplers only"),
])
def test_bad_guidance_options_are_one_line_errors(models, tmp_path, extra, message):
    code, _, err = _cli("sample", "--model", str(models["base"]), "--classifier", str(models["classifier"]),
                        "--steps", "2", "--seeds", "0", "--out", str(tmp_path / "o"), *extra)
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_classifier_of_another_resolution_is_a_one_line_error(models, tmp_path):
    import json

    folder = tmp_path / "clf32"
    folder.mkdir()
    flags = {**json.loads((models["classifier"].parent / "flags.json").read_text()), "image_size": 32}
    flags["classifier_attention_resolutions"] = "16"
    (folder / "flags.json").write_text(json.dumps(flags))
    kept = {k: v for k, v in flags.items() if k not in ("family", "diffusion_steps")}
    torch.save(random_state_dict(template_of(C.create_classifier, **kept), 5), folder / "model.pt")
    code, _, err = _cli("sample", "--model", str(models["base"]), "--classifier", str(folder / "model.pt"),
                        "--steps", "2", "--seeds", "0", "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1
    assert "classifier is for 32x32 images but the model makes 16x16" in err


def test_a_zoo_model_that_is_no_classifier_is_refused(models, tmp_path):
    code, _, err = _cli("sample", "--model", str(models["base"]), "--classifier", "adm-imagenet64", "--steps", "2",
                        "--seeds", "0", "--out", str(tmp_path / "o"))
    assert code == 2 and "adm-imagenet64 is not a classifier" in err and "adm-imagenet64-classifier" in err


def test_sweep_takes_a_list_of_scales_as_one_more_axis_of_cells(models, tmp_path, inception_path):
    import csv

    csv_path = tmp_path / "sweep.csv"
    code, out, err = _cli("sweep", "--model", str(models["base"]), "--classifier", str(models["classifier"]),
                          "--classifier-scale", "0,3", "--sampler", "ddim", "--steps", "2", "--num-images", "2",
                          "--ref", "builtin:shapes32", "--ref-images", "4", "--csv", str(csv_path),
                          "--inception", str(inception_path), "--table")
    assert code == 0, err
    rows = list(csv.DictReader(open(csv_path, newline="")))
    clf_sha = sk.output.file_sha256(models["classifier"])
    assert [r["model"] for r in rows] == [f"{models['base']} + {models['classifier']} scale {s}" for s in (0, 3)]
    assert all(r["sha256"].endswith(f" + {clf_sha}") for r in rows)
    assert rows[0]["fid"] != rows[1]["fid"] and "ddim s=3" in out
