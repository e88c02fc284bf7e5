"""samplerkit.output: atomic files, the per-seed layout, the evaluator's npz, grids, file hashes."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import numpy as np
import pytest

from samplerkit import output
from samplerkit.errors import SamplerkitError


def _images(n: int, h: int = 4, w: int = 5, c: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def _temporaries(root) -> list:
    return [p for p in root.rglob("*") if output.TMP_MARK in p.name]


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a" / "f.bin"
    output.atomic_write(path, b"old")
    output.atomic_write(path, b"new")
    assert path.read_bytes() == b"new" and not _temporaries(tmp_path)


def test_failure_during_an_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    output.atomic_write(path, b"complete")
    with pytest.raises(RuntimeError), output.atomic_file(path) as f:
        f.write(b"half")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"complete" and not _temporaries(tmp_path)


def test_atomic_files_get_umask_permissions_not_0600(tmp_path):
    output.atomic_write(tmp_path / "f", b"")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o666 & ~umask


def test_sweep_temporaries_removes_only_temporaries(tmp_path):
    (tmp_path / "000000").mkdir()
    keep, stale = tmp_path / "000000" / "000001.png", tmp_path / "000000" / f".000002.png{output.TMP_MARK}x1"
    keep.write_bytes(b"png")
    stale.write_bytes(b"half")
    assert output.sweep_temporaries(tmp_path) == 1
    assert keep.exists() and not stale.exists()


@pytest.mark.parametrize("seed,path", [(0, "000000/000000.png"), (999, "000000/000999.png"),
                                       (1234, "001000/001234.png"), (49999, "049000/049999.png"),
                                       (1234567, "1234000/1234567.png")])
def test_png_paths_use_folders_of_1000_seeds(tmp_path, seed, path):
    assert output.png_path(tmp_path, seed) == tmp_path / path


@pytest.mark.parametrize("channels", [3, 1])
def test_png_round_trip_is_lossless(tmp_path, channels):
    image = _images(1, c=channels)[0]
    output.atomic_write(output.png_path(tmp_path, 7), output.encode_png(image))
    back = output.read_image(tmp_path, 7)
    assert back.dtype == np.uint8 and np.array_equal(back, image)


def test_read_image_falls_back_to_the_parts_array(tmp_path):
    image = _images(1)[0]
    output.atomic_write(output.part_path(tmp_path, 3), output.encode_npy(image))
    assert np.array_equal(output.read_image(tmp_path, 3), image)
    with pytest.raises(SamplerkitError, match="seed 4"):
        output.read_image(tmp_path, 4)


def test_streamed_npz_loads_like_np_savez(tmp_path):
    images, labels = _images(7), np.arange(7) % 3
    output.write_npz(tmp_path / "s.npz", iter(images), labels, count=7)
    data = np.load(tmp_path / "s.npz")
    assert data.files == ["arr_0", "arr_1"]
    assert data["arr_0"].dtype == np.uint8 and np.array_equal(data["arr_0"], images)
    assert data["arr_1"].dtype == np.int64 and data["arr_1"].tolist() == labels.tolist()


def test_npz_without_labels_has_only_arr_0(tmp_path):
    output.write_npz(tmp_path / "s.npz", _images(2))
    assert np.load(tmp_path / "s.npz").files == ["arr_0"]


def test_npz_with_fewer_images_than_announced_is_not_written(tmp_path):
    with pytest.raises(SamplerkitError, match="expected 5 images"):
        output.write_npz(tmp_path / "s.npz", iter(_images(3)), count=5)
    assert not (tmp_path / "s.npz").exists() and not _temporaries(tmp_path)


def test_iter_npz_images_streams_arr_0_back(tmp_path):
    images = _images(5)
    np.savez(tmp_path / "ref.npz", arr_0=images)
    assert np.array_equal(np.stack(list(output.iter_npz_images(tmp_path / "ref.npz"))), images)


def test_npz_name_follows_guided_diffusion():
    assert output.npz_name(50000, 64, 64) == "samples_50000x64x64x3.npz"


def test_grid_tiles_row_major_into_a_near_square():
    images = _images(5)
    g = output.grid(images)
    assert g.shape == (2 * 4, 3 * 5, 3)  # 5 images -> 3 columns, 2 rows
    assert np.array_equal(g[4:8, 5:10], images[4]) and not g[4:8, 10:15].any()


def test_grid_keeps_at_most_64_images():
    assert output.grid(_images(100, 2, 2)).shape == (16, 16, 3)


def test_clear_outputs_removes_only_what_sample_writes(tmp_path):
    for name in ("000000/000001.png", ".parts/000001.npy", "samples_1x4x5x3.npz", "grid.png", "manifest.json",
                 "settings.json", "notes.txt", "mine/keep.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert output.has_images(tmp_path)
    output.clear_outputs(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "mine/keep.png", "notes.txt"]
    assert not output.has_images(tmp_path)


def test_file_writer_writes_every_file(tmp_path):
    images = _images(40)
    with output.FileWriter(workers=2, max_pending=4) as writer:
        for seed, image in enumerate(images):
            writer.submit(output.png_path(tmp_path, seed), lambda im=image: output.encode_png(im))
    assert all(np.array_equal(output.read_image(tmp_path, s), images[s]) for s in range(40))


def test_file_writer_reports_a_failed_write(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    writer = output.FileWriter()
    writer.submit(tmp_path / "file" / "child.png", lambda: b"x")  # parent is a file
    with pytest.raises(SamplerkitError, match="cannot write"):
        writer.close()


def test_check_writable_refuses_an_unwritable_folder(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(SamplerkitError, match="cannot write"):
        output.check_writable(tmp_path / "file" / "out")
    assert output.check_writable(tmp_path / "new" / "out").is_dir() and not _temporaries(tmp_path)


def test_file_sha256_is_hashed_once_and_remembered_by_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model.pt"
    model.write_bytes(os.urandom(1000))
    assert output.file_sha256(model) == hashlib.sha256(model.read_bytes()).hexdigest()
    store = tmp_path / "cache" / "file-sha256.json"
    table = json.loads(store.read_text())
    table[str(model.resolve())]["sha256"] = "remembered"
    store.write_text(json.dumps(table))
    output._HASHES.clear()  # a new process
    assert output.file_sha256(model) == "remembered"
    st = model.stat()
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: hashed again
    assert output.file_sha256(model) == hashlib.sha256(model.read_bytes()).hexdigest()


def test_json_text_puts_number_lists_on_one_line_and_round_trips():
    obj = {"seeds": list(range(5)), "labels": [[1, 2], [3]], "note": "[1,2]", "names": ["a"], "inf": "inf"}
    text = output.json_text(obj)
    assert json.loads(text) == obj
    assert '"seeds": [0, 1, 2, 3, 4]' in text and text.count("\n") == 12
