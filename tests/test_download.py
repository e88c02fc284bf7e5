"""samplerkit.download against a real HTTP server on 127.0.0.1 with injected faults."""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import time
from pathlib import Path

import pytest
import requests
from _http_server import FileServer, fetch_after_marker

from samplerkit import download
from samplerkit.download import fetch
from samplerkit.errors import SamplerkitError

PAYLOAD = hashlib.shake_256(b"samplerkit").digest(1 << 20)  # 1 MiB, deterministic
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
FAST = dict(progress=False, retry_base=0.01)


@pytest.fixture
def srv():
    with FileServer() as s:
        yield s


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SAMPLERKIT_OFFLINE", raising=False)
    return tmp_path / "cache"


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched in offline mode")

    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.setattr(requests, "get", refuse)


def test_download_lands_at_the_cache_path_with_a_record(srv, cache):
    path = fetch(srv.add("/m.pt", PAYLOAD), sha256=DIGEST, **FAST)
    assert path == cache / "m.pt"
    assert path.read_bytes() == PAYLOAD
    assert download.read_record(path)["sha256"] == DIGEST
    assert not (cache / "m.pt.part").exists()


def test_dropped_connection_resumes_next_call_with_range_for_only_the_rest(srv, cache):
    url = srv.add("/m.pt", PAYLOAD)
    srv.faults["/m.pt"] = ["drop:0.5"]
    with pytest.raises(SamplerkitError, match="connection"):
        fetch(url, sha256=DIGEST, retries=0, **FAST)
    half = (cache / "m.pt.part").stat().st_size
    assert half == len(PAYLOAD) // 2 and not (cache / "m.pt").exists()

    path = fetch(url, sha256=DIGEST, **FAST)
    first, second = srv.hits("/m.pt")
    assert first.range is None and second.range == f"bytes={half}-"
    assert (second.status, second.sent) == (206, len(PAYLOAD) - half)
    assert path.read_bytes() == PAYLOAD


def test_dropped_connection_is_retried_within_one_call(srv, cache):
    url = srv.add("/m.pt", PAYLOAD)
    srv.faults["/m.pt"] = ["drop:0.3"]
    assert fetch(url, sha256=DIGEST, retries=2, **FAST).read_bytes() == PAYLOAD
    assert [h.status for h in srv.hits("/m.pt")] == [200, 206]
    assert sum(h.sent for h in srv.hits("/m.pt")) == len(PAYLOAD)


def test_server_ignoring_range_restarts_cleanly_from_zero(srv, cache):
    url = srv.add("/m.pt", PAYLOAD, ignore_range=True)
    srv.faults["/m.pt"] = ["drop:0.5"]
    with pytest.raises(SamplerkitError):
        fetch(url, sha256=DIGEST, retries=0, **FAST)
    path = fetch(url, sha256=DIGEST, **FAST)
    second = srv.hits("/m.pt")[1]
    assert second.range is not None and second.status == 200
    assert path.read_bytes() == PAYLOAD


def test_inconsistent_content_range_discards_the_part(srv, cache):
    cache.mkdir()
    (cache / "m.pt.part").write_bytes(PAYLOAD[:1000])
    url = srv.add("/m.pt", PAYLOAD)
    srv.faults["/m.pt"] = ["bad-range"]  # answers 206 "bytes 0-..." to a request for bytes=1000-
    path = fetch(url, sha256=DIGEST, retries=1, **FAST)
    assert [h.range for h in srv.hits("/m.pt")] == ["bytes=1000-", None]
    assert path.read_bytes() == PAYLOAD


def test_complete_part_is_finished_from_a_416_answer(srv, cache):
    cache.mkdir()
    (cache / "m.pt.part").write_bytes(PAYLOAD)
    path = fetch(srv.add("/m.pt", PAYLOAD), sha256=DIGEST, **FAST)
    assert [h.status for h in srv.hits("/m.pt")] == [416]
    assert path.read_bytes() == PAYLOAD


def test_wrong_sha256_raises_and_leaves_no_file(srv, cache):
    with pytest.raises(SamplerkitError, match=f"sha256 {DIGEST}, expected 0{{64}}"):
        fetch(srv.add("/m.pt", PAYLOAD), sha256="0" * 64, **FAST)
    assert sorted(p.name for p in cache.iterdir()) == ["m.pt.lock"]


def test_500_twice_then_200_succeeds_after_retries(srv, cache):
    url = srv.add("/m.pt", PAYLOAD)
    srv.faults["/m.pt"] = ["status:500", "status:503"]
    assert fetch(url, sha256=DIGEST, retries=3, **FAST).read_bytes() == PAYLOAD
    assert [h.status for h in srv.hits("/m.pt")] == [500, 503, 200]


def test_retries_are_bounded(srv, cache):
    url = srv.add("/m.pt", PAYLOAD)
    srv.faults["/m.pt"] = ["status:500"] * 10
    with pytest.raises(SamplerkitError, match="after 3 attempts"):
        fetch(url, retries=2, **FAST)
    assert len(srv.hits("/m.pt")) == 3


def test_backoff_doubles_from_the_base_delay(srv, cache, monkeypatch):
    slept = []
    monkeypatch.setattr(download.time, "sleep", slept.append)
    url = srv.add("/m.pt", PAYLOAD)
    srv.faults["/m.pt"] = ["status:500"] * 3
    monkeypatch.setenv("SAMPLERKIT_RETRY_BASE", "0.5")
    fetch(url, progress=False, retries=3)
    assert slept == [0.5, 1.0, 2.0]


def test_404_fails_at_once_naming_the_url(srv, cache):
    url = srv.url("/missing.pt")
    with pytest.raises(SamplerkitError) as err:
        fetch(url, retries=5, **FAST)
    assert url in str(err.value) and "404" in str(err.value) and str(cache / "missing.pt") in str(err.value)
    assert len(srv.hits("/missing.pt")) == 1


def test_read_timeout_is_retried(srv, cache):
    url = srv.add("/m.pt", PAYLOAD)
    srv.faults["/m.pt"] = ["stall:1.0"]
    assert fetch(url, sha256=DIGEST, retries=1, timeout=0.3, **FAST).read_bytes() == PAYLOAD
    assert [h.status for h in srv.hits("/m.pt")] == [-1, 200]


def test_cached_file_is_not_downloaded_again(srv, cache):
    url = srv.add("/m.pt", PAYLOAD)
    fetch(url, sha256=DIGEST, **FAST)
    fetch(url, sha256=DIGEST, **FAST)
    fetch(url, **FAST)
    assert len(srv.hits("/m.pt")) == 1


def test_cached_file_not_matching_the_hash_is_replaced(srv, cache):
    cache.mkdir()
    (cache / "m.pt").write_bytes(b"stale")
    path = fetch(srv.add("/m.pt", PAYLOAD), sha256=DIGEST, **FAST)
    assert path.read_bytes() == PAYLOAD


def test_trusted_digest_catches_a_changed_file_and_says_how_to_reset(srv, cache, monkeypatch):
    path = fetch(srv.add("/m.pt", PAYLOAD), **FAST)  # no published hash: the digest is recorded, untrusted
    assert download.trusted_sha256(path) is None
    assert download.trust(path) == DIGEST  # what a successful load does
    path.write_bytes(PAYLOAD[::-1])
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    with pytest.raises(SamplerkitError, match=f"expected {DIGEST}") as err:
        fetch(srv.url("/m.pt"), **FAST)
    assert f"delete {cache / 'm.pt.json'}" in str(err.value)
    with pytest.raises(SamplerkitError, match="samplerkit models verify x-m` with reset=True"):
        fetch(srv.url("/m.pt"), label="x-m", **FAST)
    assert download.forget(path)
    assert fetch(srv.url("/m.pt"), **FAST) == path and download.read_record(path)["sha256"] == (
        hashlib.sha256(PAYLOAD[::-1]).hexdigest())


def test_an_untrusted_digest_never_locks_in_a_file(srv, cache, monkeypatch):
    """The digest of a file that never loaded is not the reference: a replaced copy is accepted."""
    path = fetch(srv.add("/m.pt", PAYLOAD[:1000]), **FAST)  # a truncated file, recorded but not trusted
    path.write_bytes(PAYLOAD)  # the user puts a good copy in place
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    assert fetch(srv.url("/m.pt"), **FAST).read_bytes() == PAYLOAD
    assert download.read_record(path)["sha256"] == DIGEST and download.trusted_sha256(path) is None


def test_a_record_from_before_trust_existed_counts_as_trusted(cache):
    cache.mkdir()
    path = cache / "m.pt"
    path.write_bytes(PAYLOAD)
    download.write_record(path, "https://example.invalid/m.pt", DIGEST)
    record = download.record_path(path)
    old = {k: v for k, v in json.loads(record.read_text()).items() if k != "trusted"}
    record.write_text(json.dumps(old))
    assert download.trusted_sha256(path) == DIGEST


def test_progress_bar_goes_to_stderr(srv, cache, capsys):
    fetch(srv.add("/m.pt", PAYLOAD), progress=True, retry_base=0.01)
    out, err = capsys.readouterr()
    assert out == "" and "m.pt" in err


def test_offline_missing_file_is_one_line_with_the_path(srv, cache, monkeypatch):
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    _no_network(monkeypatch)
    url = srv.url("/m.pt")
    with pytest.raises(SamplerkitError) as err:
        fetch(url, **FAST)
    msg = str(err.value)
    assert "\n" not in msg and url in msg and f"save it as {cache / 'm.pt'}" in msg
    assert srv.log == []


def test_offline_cached_file_needs_no_network(cache, monkeypatch):
    cache.mkdir()
    (cache / "m.pt").write_bytes(PAYLOAD)
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    _no_network(monkeypatch)
    assert fetch("https://example.invalid/m.pt", sha256=DIGEST, **FAST) == cache / "m.pt"


def test_two_processes_fetching_one_url_download_it_once(srv, cache, tmp_path):
    payload = PAYLOAD * 2
    url = srv.add("/m.pt", payload, chunk_delay=0.02)  # ~0.6 s of transfer
    digest = hashlib.sha256(payload).hexdigest()
    cache.mkdir()
    ctx = multiprocessing.get_context("spawn")
    markers = [tmp_path / f"started{i}" for i in range(2)]
    with open(cache / "m.pt.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # both children queue behind this lock: a real race after release
        procs = [ctx.Process(target=fetch_after_marker, args=(str(m),),
                             kwargs=dict(url=url, sha256=digest, cache_dir=str(cache), progress=False))
                 for m in markers]
        for p in procs:
            p.start()
        deadline = time.monotonic() + 60
        while not all(m.exists() for m in markers) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        fcntl.flock(lock, fcntl.LOCK_UN)
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(srv.hits("/m.pt")) == 1
    assert (cache / "m.pt").read_bytes() == payload
    assert not (cache / "m.pt.part").exists()


@pytest.mark.parametrize("style", ["cookie", "link", "form"])
def test_google_drive_confirmation_page_is_passed(srv, cache, monkeypatch, style):
    monkeypatch.setattr(download, "DRIVE_ENDPOINT", srv.url("/uc"))
    drive = srv.add_drive("1AbC_d-9", PAYLOAD, style)
    path = fetch("https://drive.google.com/file/d/1AbC_d-9/view?usp=sharing", sha256=DIGEST,
                 filename="adm-ip.pt", **FAST)
    assert drive.pages == 1
    assert path.read_bytes() == PAYLOAD and path.name == "adm-ip.pt"
    assert [h.status for h in srv.hits(drive.path)] == [200]


def test_google_drive_small_file_needs_no_confirmation(srv, cache, monkeypatch):
    monkeypatch.setattr(download, "DRIVE_ENDPOINT", srv.url("/uc"))
    srv.add_drive("1small", PAYLOAD, "direct")
    path = fetch("https://drive.google.com/uc?id=1small&export=download", sha256=DIGEST, **FAST)
    assert path.name == "gdrive-1small" and path.read_bytes() == PAYLOAD


def test_google_drive_page_without_a_way_on_is_an_error(srv, cache, monkeypatch):
    monkeypatch.setattr(download, "DRIVE_ENDPOINT", srv.url("/uc"))
    srv.add_drive("1gone", PAYLOAD, "quota")
    with pytest.raises(SamplerkitError, match="Google Drive did not offer"):
        fetch("https://drive.google.com/file/d/1gone/view", filename="x.pt", **FAST)


def test_drive_file_id_of_the_link_forms():
    assert download.drive_file_id("https://drive.google.com/file/d/1yL-x_Q/view?usp=sharing") == "1yL-x_Q"
    assert download.drive_file_id("https://drive.google.com/uc?id=1yL&export=download") == "1yL"
    assert download.drive_file_id("https://drive.usercontent.google.com/download?id=1yL") == "1yL"
    assert download.drive_file_id("https://example.com/file/d/1yL/view") is None


def test_cache_dir_follows_env_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("SAMPLERKIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.default_cache_dir() == tmp_path / "xdg" / "samplerkit"
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path / "mine"))
    assert download.default_cache_dir() == Path(tmp_path / "mine")
