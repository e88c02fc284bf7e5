"""Download benchmark: samplerkit.download.fetch against curl, and the cost of hashing.

A file of random bytes (200 MB by default, written to a temporary dir, never kept) is served
by ``python -m http.server`` on 127.0.0.1 in a separate process. Each repeat measures:

* curl: ``curl -s -o /dev/null URL`` (the reference) and ``curl -s -o FILE URL`` (same disk work);
* fetch: ``fetch(url, sha256=<digest>)`` into a fresh cache dir (stream, hash, write, fsync, rename);
* fetch without hashing: the same with the sha256 swapped for a no-op hasher (what hashing costs).

Best of the repeats is reported as MB/s and as ratios in the same run. Goals: fetch / curl >= 0.8.

    python benchmarks/bench_download.py [--mb 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from _common import best_time, print_machine

from samplerkit import download


class _NoHash:
    """Stands in for hashlib.sha256 when measuring fetch without hashing."""

    def update(self, data: bytes) -> None:
        pass

    def hexdigest(self) -> str:
        return "0" * 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, deadline: float = 20.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline:
        try:
            requests.head(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"the test server at {url} did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="file size in MB (10^6 bytes)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print_machine()
    if shutil.which("curl") is None:
        sys.exit("curl is needed as the reference")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        served = tmp / "served"
        served.mkdir()
        data = os.urandom(args.mb * 10**6)
        (served / "blob.bin").write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        del data
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(served)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/blob.bin"
        try:
            _wait_until_up(url)
            out_file = tmp / "curl.bin"

            def curl_null():
                subprocess.run(["curl", "-s", "-f", "-o", "/dev/null", url], check=True)

            def curl_file():
                subprocess.run(["curl", "-s", "-f", "-o", str(out_file), url], check=True)
                out_file.unlink()

            def fetch(expected):
                cache = tmp / "cache"
                path = download.fetch(url, sha256=expected, cache_dir=cache, progress=False)
                assert path.stat().st_size == args.mb * 10**6
                shutil.rmtree(cache)

            t_null = best_time(curl_null, args.repeats)
            t_file = best_time(curl_file, args.repeats)
            t_fetch = best_time(lambda: fetch(digest), args.repeats)
            real_hasher = download._hasher
            download._hasher = _NoHash
            try:
                t_nohash = best_time(lambda: fetch(None), args.repeats)
            finally:
                download._hasher = real_hasher
        finally:
            server.terminate()
            server.wait(timeout=10)

    mb = args.mb
    print(f"file: {mb} MB from python -m http.server on 127.0.0.1, best of {args.repeats}")
    print(f"  curl -o /dev/null      {mb / t_null:8.0f} MB/s   (reference)")
    print(f"  curl -o FILE           {mb / t_file:8.0f} MB/s")
    print(f"  fetch, sha256 on       {mb / t_fetch:8.0f} MB/s")
    print(f"  fetch, sha256 off      {mb / t_nohash:8.0f} MB/s")
    print(f"fetch / curl(/dev/null) throughput: {t_null / t_fetch:.2f}   (goal >= 0.8)")
    print(f"fetch / curl(FILE)      throughput: {t_file / t_fetch:.2f}")
    print(f"hashing overhead (time on / off): {t_fetch / t_nohash:.3f}")


if __name__ == "__main__":
    main()
