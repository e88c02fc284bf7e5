"""The model zoo registry, loading through it, and ``samplerkit models ...``."""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import replace

import pytest
import requests
import torch
from _http_server import FileServer

from samplerkit import download, zoo
from samplerkit.cli import main
from samplerkit.cli._options import with_argument_flags
from samplerkit.errors import SamplerkitError
from samplerkit.generate import sampler_options

ENTRIES = [e for e in zoo.entries() if e.family != "builtin"]  # downloadable checkpoints
BUILTIN = [e for e in zoo.entries() if e.family == "builtin"]
UNET_ENTRIES = [e for e in ENTRIES if e.family in ("adm", "iddpm")]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SAMPLERKIT_OFFLINE", raising=False)
    (tmp_path / "cache").mkdir()
    return tmp_path / "cache"


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so tests can register entries."""
    monkeypatch.setattr(zoo, "_REGISTRY", dict(zoo._REGISTRY))


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched in offline mode")

    monkeypatch.setattr(requests.Session, "request", refuse)


def _run(capsys, *argv):
    """Run the real console entry point; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main(list(argv))
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return done.value.code, out, err


# ---------------------------------------------------------------------------------------------
# registry sanity


def test_names_are_unique_lowercase_and_urls_are_http():
    names = [e.name for e in ENTRIES]
    assert len(names) == len(set(names))
    for e in ENTRIES:
        assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*", e.name), e.name
        assert e.urls and all(re.match(r"https?://", u) for u in e.urls), e.name
        assert e.filename and "/" not in e.filename


def test_cache_file_names_are_unique():
    """One cache file, one URL (EDM2's presets share their network files with the file entries)."""
    files = {}
    for e in ENTRIES:
        assert files.setdefault((e.subdir, e.filename), e.urls) == e.urls, e.name


def test_every_published_checkpoint_has_an_entry():
    files = {e.filename for e in ENTRIES}
    gd = ["64x64_diffusion.pt", "128x128_diffusion.pt", "256x256_diffusion.pt", "256x256_diffusion_uncond.pt",
          "512x512_diffusion.pt", "lsun_bedroom.pt", "lsun_cat.pt", "lsun_horse.pt", "lsun_horse_nodropout.pt"]
    iddpm = ["cifar10_uncond_50M_500K.pt", "imagenet64_uncond_100M_1500K.pt", "imagenet64_cond_270M_250K.pt",
             "lsun_uncond_100M_1200K_bs128.pt"]
    edm = [f"edm-cifar10-32x32-{c}-{a}.pkl" for c in ("cond", "uncond") for a in ("vp", "ve")]
    edm += [f"edm-{d}-64x64-uncond-{a}.pkl" for d in ("ffhq", "afhqv2") for a in ("vp", "ve")]
    edm += ["edm-imagenet-64x64-cond-adm.pkl", "baseline-imagenet-64x64-cond-adm.pkl"]
    edm += [f"baseline-{d}-uncond-{a}.pkl"
            for d in ("cifar10-32x32", "ffhq-64x64", "afhqv2-64x64") for a in ("vp", "ve")]
    assert not set(gd + iddpm + edm) - files
    assert len([e for e in ENTRIES if e.family == "edm"]) == 16
    ip = {"adm-ip-cifar10", "adm-cifar10", "adm-ip-imagenet32", "adm-ip-lsun-tower", "adm-lsun-tower",
          "adm-ip-celeba", "adm-ip-ffhq128", "adm-ffhq128"}
    assert ip <= {e.name for e in ENTRIES}


def test_flags_agree_with_the_entry_metadata():
    for e in UNET_ENTRIES:
        f = e.flags
        assert f["image_size"] == e.resolution, e.name
        assert f["class_cond"] == e.conditional, e.name
        assert (e.num_classes == 1000) == e.conditional, e.name
        assert (f["diffusion_steps"], f["noise_schedule"]) == (e.T, e.schedule), e.name
        assert f["learn_sigma"] is True, e.name
    assert all(e.flags == {} for e in ENTRIES if e.family == "edm")


def test_flag_names_are_the_adapters_upstream_flags():
    from samplerkit.adapters import adm, iddpm

    for e in UNET_ENTRIES:
        module = adm if e.family == "adm" else iddpm
        unknown = set(e.flags) - set(module.NETWORK_DEFAULTS) - set(module.DIFFUSION_DEFAULTS)
        assert not unknown, (e.name, unknown)


@pytest.mark.parametrize("entry", UNET_ENTRIES, ids=lambda e: e.name)
def test_each_entry_flags_construct_its_adapter_at_reduced_width(entry):
    from samplerkit.adapters import adm, iddpm

    module = adm if entry.family == "adm" else iddpm
    flags = {k: v for k, v in entry.flags.items() if k in module.NETWORK_DEFAULTS}
    # 32 channels at the narrowest level (512 px starts at channel_mult 0.5): GroupNorm(32) still fits
    flags["num_channels"] = 64 if entry.resolution == 512 else 32
    if flags.get("num_head_channels", -1) > 0:
        flags["num_head_channels"] = 16
    unet = module.create_unet(**flags)
    assert unet.out[-1].out_channels == 6  # eps and v (learned sigma)
    assert hasattr(unet, "label_emb") == entry.conditional


def test_recommended_settings_are_valid_sampler_options():
    for e in (e for e in ENTRIES if e.family != "vae"):  # an autoencoder has no sampler
        rec = dict(e.recommended)
        sampler, steps = rec.pop("sampler"), rec.pop("steps")
        assert isinstance(steps, int) and steps > 0, e.name
        assert set(rec) <= set(sampler_options(sampler)), e.name


def test_edm_recommendations_follow_the_edm_readme():
    assert zoo.get("edm-cifar10-cond-vp").recommended == {"sampler": "heun", "steps": 18}
    assert zoo.get("edm-ffhq64-uncond-ve").recommended == {"sampler": "heun", "steps": 40}
    assert zoo.get("edm-afhqv2-uncond-vp").recommended == {"sampler": "heun", "steps": 40}
    assert zoo.get("edm-imagenet64-cond").recommended == {
        "sampler": "stochastic", "steps": 256, "S_churn": 40, "S_min": 0.05, "S_max": 50, "S_noise": 1.003}


def test_iddpm_cifar10_flags_are_the_readme_flags():
    f = zoo.get("iddpm-cifar10").flags
    readme = dict(image_size=32, num_channels=128, num_res_blocks=3, learn_sigma=True, dropout=0.3,
                  diffusion_steps=4000, noise_schedule="cosine")
    assert {k: f[k] for k in readme} == readme


def test_ddpm_ip_entries_use_google_drive_links():
    for e in ENTRIES:
        if e.name.startswith("adm-ip-") or e.name in ("adm-cifar10", "adm-lsun-tower", "adm-ffhq128"):
            assert download.drive_file_id(e.urls[0]), e.name


def test_unknown_name_lists_close_matches():
    with pytest.raises(SamplerkitError, match="did you mean edm-cifar10-cond-vp"):
        zoo.get("edm-cifar10-cond-pv")


def test_register_refuses_a_taken_name_and_a_bad_family(registry):
    e = zoo.get("adm-imagenet64")
    with pytest.raises(SamplerkitError, match="taken"):
        zoo.register(e)
    with pytest.raises(SamplerkitError, match="family"):
        zoo.register(replace(e, name="x-new", family="gan"))
    with pytest.raises(SamplerkitError, match="loader"):
        zoo.register(zoo.ZooEntry(name="x-builtin", family="builtin"))


def test_builtin_entry_loads_without_download(registry, cache, monkeypatch):
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    _no_network(monkeypatch)
    zoo.register(zoo.ZooEntry(name="x-builtin", family="builtin", resolution=8, loader=lambda: torch.nn.Identity()))
    e = zoo.get("x-builtin")
    assert e.is_cached() and e.local_path() is None
    assert isinstance(e.load(), torch.nn.Identity)


# ---------------------------------------------------------------------------------------------
# loading through the zoo

TINY = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="4",
            num_head_channels=16, learn_sigma=True, class_cond=False, diffusion_steps=50, noise_schedule="cosine")


def _tiny_checkpoint(seed: int = 0) -> bytes:
    from samplerkit.adapters import adm

    torch.manual_seed(seed)
    unet = adm.create_unet(**{k: v for k, v in TINY.items() if k in adm.NETWORK_DEFAULTS})
    buf = io.BytesIO()
    torch.save(unet.state_dict(), buf)
    return buf.getvalue()


def test_load_downloads_records_the_digest_and_then_works_offline(registry, cache, monkeypatch):
    import samplerkit as sk

    blob = _tiny_checkpoint()
    with FileServer() as srv:
        url = srv.add("/tiny.pt", blob)
        zoo.register(zoo.ZooEntry(name="x-tiny", family="adm", urls=(url,), filename="tiny.pt", resolution=8,
                                  flags=dict(TINY), T=50, schedule="cosine"))
        net = sk.load("x-tiny")
        assert (net.img_resolution, net.label_dim, len(srv.log)) == (8, 0, 1)
    assert zoo.get("x-tiny").expected_sha256() == hashlib.sha256(blob).hexdigest()
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    _no_network(monkeypatch)
    x = torch.randn(2, 3, 8, 8)
    sigma = torch.tensor([1.0, 1.0])
    assert torch.equal(sk.load("x-tiny")(x, sigma), net(x, sigma))


def _tiny_entry(url: str) -> zoo.ZooEntry:
    return zoo.register(zoo.ZooEntry(name="x-tiny", family="adm", urls=(url,), filename="tiny.pt", resolution=8,
                                     flags=dict(TINY), T=50, schedule="cosine"))


def test_a_truncated_download_does_not_become_the_trusted_digest(registry, cache, monkeypatch, capsys):
    """A file that never loaded is not the reference: after the user replaces a truncated download
    by a good copy, the good copy loads (offline) and its digest is the one recorded."""
    import samplerkit as sk

    blob = _tiny_checkpoint()
    with FileServer() as srv:
        _tiny_entry(srv.add("/tiny.pt", blob[: len(blob) // 2]))  # the server delivers half the file
        with pytest.raises(SamplerkitError, match="truncated or corrupted .*`samplerkit models download x-tiny`"):
            sk.load("x-tiny")
    assert zoo.get("x-tiny").expected_sha256() is None
    (cache / "tiny.pt").write_bytes(blob)
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    _no_network(monkeypatch)
    assert sk.load("x-tiny").img_resolution == 8
    good = hashlib.sha256(blob).hexdigest()
    assert zoo.get("x-tiny").expected_sha256() == good
    assert json.loads((cache / "tiny.pt.json").read_text())["trusted"] is True
    code, out, _ = _run(capsys, "models", "info", "x-tiny")
    assert code == 0 and f"sha256:      {good} (recorded when the cached file first loaded)" in out.splitlines()


def test_models_verify_reset_forgets_the_recorded_digest(registry, cache, monkeypatch, capsys):
    import samplerkit as sk

    first, second = _tiny_checkpoint(0), _tiny_checkpoint(1)
    (cache / "tiny.pt").write_bytes(first)
    _tiny_entry("https://example.invalid/tiny.pt")
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    _no_network(monkeypatch)
    sk.load("x-tiny")  # loads: its digest is now the trusted one
    (cache / "tiny.pt").write_bytes(second)  # another copy the user wants to use instead
    with pytest.raises(SamplerkitError, match=r"`samplerkit models verify x-tiny` with reset=True") as err:
        sk.load("x-tiny")
    assert "forget the recorded digest with `samplerkit models verify x-tiny --reset`" in with_argument_flags(
        str(err.value))  # what the command line prints of it
    code, out, _ = _run(capsys, "models", "verify", "x-tiny")
    assert code == 2 and out.split()[:2] == ["MISMATCH", "x-tiny"]
    code, out, _ = _run(capsys, "models", "verify", "x-tiny", "--reset")
    assert code == 0 and out.split()[:2] == ["PENDING", "x-tiny"]
    sk.load("x-tiny")
    assert zoo.get("x-tiny").expected_sha256() == hashlib.sha256(second).hexdigest()
    code, out, err = _run(capsys, "models", "verify", "--reset")
    assert code == 2 and "NAMES" in err


def test_models_info_shows_an_untrusted_recorded_digest(registry, cache, capsys):
    blob = _tiny_checkpoint()
    (cache / "tiny.pt").write_bytes(blob)
    _tiny_entry("https://example.invalid/tiny.pt")
    download.write_record(cache / "tiny.pt", "https://example.invalid/tiny.pt", hashlib.sha256(blob).hexdigest())
    code, out, _ = _run(capsys, "models", "info", "x-tiny")
    line = next(s for s in out.splitlines() if s.startswith("sha256:"))
    assert line == f"sha256:      {hashlib.sha256(blob).hexdigest()} (of the cached file; trusted once it loads)"


def test_load_overrides_replace_entry_flags(registry, cache):
    (cache / "tiny.pt").write_bytes(_tiny_checkpoint())
    zoo.register(zoo.ZooEntry(name="x-tiny", family="adm", urls=("https://example.invalid/tiny.pt",),
                              filename="tiny.pt", resolution=8, flags=dict(TINY)))
    with pytest.raises(SamplerkitError):  # a wider network no longer fits the checkpoint
        zoo.get("x-tiny").load(num_channels=64)


# ---------------------------------------------------------------------------------------------
# command line


def test_models_list_shows_every_entry(capsys):
    code, out, _ = _run(capsys, "models", "list")
    assert code == 0
    listed = {line.split()[0] for line in out.splitlines()[1:]}
    assert listed == {e.name for e in ENTRIES + BUILTIN}


def test_models_list_json_has_every_field(capsys):
    code, out, _ = _run(capsys, "models", "list", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == len(ENTRIES + BUILTIN)
    fields = {"name", "urls", "size", "sha256", "license", "resolution", "conditional", "recommended", "flags"}
    assert fields <= set(rows[0])


def test_models_info_prints_upstream_flags(capsys):
    code, out, _ = _run(capsys, "models", "info", "iddpm-cifar10")
    assert code == 0 and "--dropout 0.3" in out and "--diffusion_steps 4000" in out


def test_models_info_unknown_name_is_one_line(capsys):
    code, out, err = _run(capsys, "models", "info", "adm-imagenet65")
    assert code == 2 and err.count("\n") == 1 and "adm-imagenet64" in err


def test_models_download_offline_missing_says_where_to_put_the_file(cache, monkeypatch, capsys):
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    _no_network(monkeypatch)
    code, out, err = _run(capsys, "models", "download", "iddpm-cifar10")
    assert code != 0 and err.count("\n") == 1
    assert str(cache / "cifar10_uncond_50M_500K.pt") in err and zoo.get("iddpm-cifar10").urls[0] in err


def test_models_download_offline_with_the_file_cached_succeeds(cache, monkeypatch, capsys):
    (cache / "cifar10_uncond_50M_500K.pt").write_bytes(b"weights")
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    _no_network(monkeypatch)
    code, out, _ = _run(capsys, "models", "download", "iddpm-cifar10")
    assert code == 0 and out.strip() == str(cache / "cifar10_uncond_50M_500K.pt")


def test_models_verify_reports_ok_mismatch_and_missing(cache, capsys):
    for name in ("a.pt", "b.pt", "c.pt"):
        (cache / name).write_bytes(name.encode())
        digest = hashlib.sha256(name.encode()).hexdigest()
        download.write_record(cache / name, f"https://example.invalid/{name}", digest, trusted=True)
    (cache / "b.pt").write_bytes(b"corrupted")
    (cache / "c.pt").unlink()
    code, out, err = _run(capsys, "models", "verify")
    status = {line.split()[1]: line.split()[0] for line in out.splitlines()}
    assert status == {"a.pt": "OK", "b.pt": "MISMATCH", "c.pt": "MISSING"}
    assert code == 2 and err.count("\n") == 1 and "2 of 3" in err


def test_builtin_models_are_listed_and_load_without_download():
    assert {e.name for e in BUILTIN} >= {"shapes32-ideal", "shapes32-ideal-cond"}
    for e in BUILTIN:
        assert not e.urls and e.is_cached()
    net = zoo.get("shapes32-ideal-cond").load()
    assert net.label_dim == 4 and net.img_resolution == 32


def test_eps_scaler_values_name_their_source_and_are_opt_in(capsys):
    """The lambda Ning et al. 2024 state for a checkpoint is shown with its sampler and source,
    and never changes the recommended (default) settings."""
    entry = zoo.get("adm-imagenet64")
    assert entry.eps_scaler == {"b": 1.006, "sampler": "ancestral", "steps": 100,
                                "source": "forever208/ADM-ES README"}
    assert "eps_scaler" not in entry.recommended
    assert zoo.get("edm-cifar10-cond-vp").eps_scaler["b"] == 1.0006
    assert all(e.eps_scaler.get("b", 1.0) >= 1.0 for e in ENTRIES)
    code, out, _ = _run(capsys, "models", "info", "adm-imagenet64")
    assert code == 0 and "--eps-scaler 1.006 with ancestral 100 steps (forever208/ADM-ES README)" in out
