"""A truncated or corrupted checkpoint is named as such -- with its size and how to get it again --
before anything tries to guess its network family or hands the file to torch."""

from __future__ import annotations

import pytest
from test_adapter_adm import ADM_CONFIGS, save_checkpoint
from test_fid import assert_one_line_error, run_cli

import samplerkit as sk
from samplerkit import checkpoint_files, zoo

CFG = {**ADM_CONFIGS["ddpm-ip-cifar10"], "num_res_blocks": 1}


@pytest.fixture(scope="module")
def good_pt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("pt"), CFG)[0]


def _cut(src, dst, keep=0.6):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def test_a_whole_checkpoint_passes(good_pt):
    assert checkpoint_files.damage(good_pt) is None
    checkpoint_files.check_intact(good_pt)


def test_truncated_pt_without_flags_json_says_truncated_not_unknown_family(good_pt, tmp_path):
    path = _cut(good_pt, tmp_path / "model.pt")
    with pytest.raises(sk.SamplerkitError) as info:
        sk.load(path)
    message = str(info.value)
    assert "truncated or corrupted" in message and f"{path.stat().st_size:,d} bytes" in message
    assert "copy or download it again" in message
    assert "cannot tell the network family" not in message and "\n" not in message


def test_truncated_pt_with_its_family_says_truncated_not_torchs_cut_sentence(good_pt, tmp_path):
    path = _cut(good_pt, tmp_path / "model.pt", keep=0.999)
    with pytest.raises(sk.SamplerkitError, match=r"truncated or corrupted .*zip directory at the end is missing"):
        sk.load(path, family="adm", **CFG)


def test_empty_and_cut_pickle_files_are_named(tmp_path):
    empty = tmp_path / "a.pt"
    empty.write_bytes(b"")
    assert checkpoint_files.damage(empty) == "it is empty"
    pkl = tmp_path / "net.pkl"
    pkl.write_bytes(b"\x80\x04\x95" + b"\0" * 40)  # protocol-4 header, cut before STOP
    assert "STOP" in checkpoint_files.damage(pkl)


def test_truncated_zoo_file_says_how_to_download_it_again(good_pt, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    entry = next(e for e in zoo.entries() if e.family == "adm" and not e.sha256)
    target = entry.local_path()
    target.parent.mkdir(parents=True)
    _cut(good_pt, target)
    with pytest.raises(sk.SamplerkitError) as info:
        sk.load(entry.name)
    message = str(info.value)
    assert f"is truncated or corrupted ({target.stat().st_size:,d} bytes" in message
    assert message.endswith(f"delete it and download it again with `samplerkit models download {entry.name}`")


def test_cli_truncated_checkpoint_is_one_line(good_pt, tmp_path):
    path = _cut(good_pt, tmp_path / "model.pt")
    code, _, err = run_cli("sample", "--model", path, "--steps", "2", "--seeds", "0", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "truncated or corrupted", f"{path.stat().st_size:,d} bytes")
