"""Helpers of the tests that compare with outputs of upstream code kept as fixtures (``tests/fixtures``):
the checkpoint the fixture holds, written where samplerkit can load it; the fixture's noise replayed
in order; closeness relative to the output's scale."""

from __future__ import annotations

from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"
TOL = 1e-5  # of the output scale


def load_fixture(name: str) -> dict:
    return torch.load(FIXTURES / name, weights_only=True)


def checkpoint_of(up: dict, tmp_path_factory, folder: str) -> Path:
    """The fixture's ``state_dict`` saved as ``small.pt`` in a fresh temporary folder."""
    path = tmp_path_factory.mktemp(folder) / "small.pt"
    torch.save(up["state_dict"], path)
    return path


def assert_close(got, want, tol: float = TOL) -> None:
    """max |got - want| <= tol * max |want|."""
    err = float((got.double() - want.double()).abs().max())
    assert err <= tol * float(want.abs().max()), err


def replay(noise):
    """A ``randn_like`` that returns the recorded draws in order (in the dtype asked for)."""
    draws = iter(noise)
    return lambda x: next(draws).to(x.dtype)
