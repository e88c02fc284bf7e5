"""Packaging: one top-level import name, every package folder in the wheel, the adapters inside samplerkit.

``adapters/`` sits at the top of the repository but installs as ``samplerkit.adapters``: a bare
top-level ``adapters`` would overwrite (and be overwritten by) the PyPI package of that name.
"""

from __future__ import annotations

import ast
import os
import pickletools
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_adapter_adm import write_run
from test_adapter_edm import build, write_case

import samplerkit as sk
from samplerkit.diffusion import alpha_bar_from_betas, betas_for

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"samplerkit": "samplerkit", "adapters": "samplerkit.adapters"}  # folder -> the package it installs as


def setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def package_folders() -> dict[str, Path]:
    """Every folder with an __init__.py under samplerkit/ and adapters/, by the name it installs as."""
    found = {}
    for folder, name in SOURCES.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            found[".".join((name, *init.parent.relative_to(ROOT / folder).parts))] = init.parent
    return found


def modules_in_tree() -> set[str]:
    """The wheel paths the modules of the package folders must have."""
    return {
        f"{name.replace('.', '/')}/{module.name}"
        for name, folder in package_folders().items()
        for module in folder.glob("*.py")
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel of a copy of the tree (setuptools' build/ stays out of the checkout); offline."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for folder in SOURCES:
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / file, src / file)
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = out.glob("samplerkit-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def test_wheel_installs_exactly_one_top_level_name_samplerkit(wheel):
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"samplerkit"}
    top_level = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    for entry in top_level:
        assert wheel.read(entry).decode().split() == ["samplerkit"]


def test_wheel_holds_every_module_of_the_tree(wheel):
    in_wheel = {n for n in wheel.namelist() if n.endswith(".py")}
    assert in_wheel == modules_in_tree()
    assert "samplerkit/adapters/edm/loader.py" in in_wheel


def test_every_package_folder_is_listed_in_pyproject():
    cfg = setuptools_config()
    assert sorted(cfg["packages"]) == sorted(package_folders())
    assert cfg["package-dir"] == {"samplerkit": "samplerkit", "samplerkit.adapters": "adapters"}


def test_adapters_import_under_samplerkit_and_no_top_level_adapters_comes_from_here(tmp_path):
    code = (
        "import importlib.util, samplerkit.adapters.adm as adm, samplerkit.adapters.edm as edm\n"
        "spec = importlib.util.find_spec('adapters')\n"
        "print(adm.__file__); print(edm.load_pickle.__module__); print(spec.origin if spec else None)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    adm_file, loader_module, top_adapters = done.stdout.split("\n")[:3]
    assert Path(adm_file).parts[-2:] == ("adapters", "adm.py")
    assert loader_module == "samplerkit.adapters.edm.loader"
    assert top_adapters == "None" or not Path(top_adapters).resolve().is_relative_to(ROOT)


def imported_modules(file: Path) -> set[str]:
    """Absolute names of the modules a source file imports (relative imports resolved to samplerkit.adapters)."""
    package = ".".join(("samplerkit.adapters", *file.parent.relative_to(ROOT / "adapters").parts))
    names = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            names.add(".".join(p for p in (base, node.module) if p))
    return names


def test_adapters_import_neither_the_loading_layer_nor_a_top_level_adapters():
    """Arrows point one way: samplerkit.load dispatches to the adapters, never the reverse (no cycle)."""
    above = ("samplerkit.loading", "samplerkit.zoo", "samplerkit.cli", "samplerkit.runs", "samplerkit.builtin")
    offending = {
        f"{file.relative_to(ROOT)}: {name}"
        for file in (ROOT / "adapters").rglob("*.py")
        for name in imported_modules(file)
        if name in ("samplerkit", "adapters") or name.startswith(("adapters.", *above))
    }
    assert offending == set()


def test_edm_pickle_loads_through_samplerkit_load_and_names_none_of_our_modules(tmp_path):
    path = write_case("edm-ddpmpp-cond", tmp_path)
    ops = pickletools.genops(path.read_bytes())
    strings = {str(arg) for op, arg, _ in ops if isinstance(arg, str)}
    assert not any(s.startswith(("samplerkit", "adapters")) for s in strings)  # a rename cannot break a pickle
    net = sk.load(path)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sigma, labels = torch.tensor([0.3, 12.0]), torch.tensor([3, 7])
    with torch.no_grad():
        assert torch.equal(net(x, sigma, labels), build("edm-ddpmpp-cond")(x, sigma, labels))
    assert type(net).__module__ == "samplerkit.adapters.edm.precond"


def test_retrain_run_folder_loads_through_samplerkit_load(tmp_path):
    path, sd = write_run(tmp_path)
    net = sk.load(path)
    loaded = net.unet.state_dict()
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], v) for k, v in sd.items())
    assert (net.img_resolution, net.learned_variance, net.label_dim) == (32, True, 0)
    assert np.array_equal(net.training_alpha_bar(), alpha_bar_from_betas(betas_for("cosine", 1000)))
