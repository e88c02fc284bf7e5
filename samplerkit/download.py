"""Checkpoint downloads into a local cache: streaming, resume, retries, sha256, atomic rename, a lock.

:func:`fetch` puts ``url`` at ``<cache dir>/<filename>`` and returns that path. The cache dir is
``$SAMPLERKIT_CACHE``, else ``$XDG_CACHE_HOME/samplerkit``, else ``~/.cache/samplerkit``.

* Bytes stream into ``<filename>.part``; an interrupted download resumes from there with an
  HTTP ``Range`` request (a server that ignores it and answers 200 restarts the file from 0).
* Connection errors, timeouts, 408/429 and 5xx are retried with exponential backoff
  (``$SAMPLERKIT_RETRIES`` attempts after the first, default 5; first delay
  ``$SAMPLERKIT_RETRY_BASE`` seconds, default 1, doubling); any other 4xx fails at once.
* The sha256 is computed while the bytes arrive (the part already on disk included); a
  mismatch deletes the part and raises. Only a complete, verified file is ``os.replace``-d
  to the final path, after an fsync, so a file at the final path is always whole.
* ``<filename>.json`` next to the file records its url, sha256, size, mtime and ``trusted``.
  A digest becomes trusted when it matches a published sha256, or (no published one) when
  the file first loads as a model (:func:`trust`, called by :meth:`samplerkit.zoo.ZooEntry.load`):
  a file that never loaded -- truncated, say -- never becomes the reference. Later calls
  without a sha256 verify against a trusted digest; an untrusted record only saves re-hashing.
  When size and mtime still match the record the file is not re-hashed (``samplerkit models
  verify`` re-hashes; ``samplerkit models verify NAME --reset`` forgets a trusted digest).
* ``fcntl.flock`` on ``<filename>.lock`` serialises processes fetching the same file; the
  second one waits, then finds the verified file.
* Google Drive links (``drive.google.com/file/d/<id>/view``, ``uc?id=<id>``) go through the
  download endpoint, including the large-file confirmation page (confirm token in a link or
  a ``download_warning`` cookie, or the ``drive.usercontent.google.com`` form with a uuid).
* ``SAMPLERKIT_OFFLINE=1`` never touches the network: a cached file is returned (verified
  locally), a missing one is a :class:`SamplerkitError` saying where to put it by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urljoin, urlsplit

import requests
import urllib3
from tqdm.auto import tqdm

from .errors import SamplerkitError

try:
    import fcntl
except ImportError:  # not on Windows: downloads there are not serialised between processes
    fcntl = None

ENV_CACHE = "SAMPLERKIT_CACHE"
ENV_OFFLINE = "SAMPLERKIT_OFFLINE"
ENV_RETRIES = "SAMPLERKIT_RETRIES"
ENV_RETRY_BASE = "SAMPLERKIT_RETRY_BASE"

DRIVE_ENDPOINT = "https://drive.google.com/uc"
DRIVE_HOSTS = ("drive.google.com", "docs.google.com", "drive.usercontent.google.com")

CHUNK_BYTES = 1 << 20
DEFAULT_TIMEOUT = (15.0, 60.0)  # (connect, read) seconds
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_hasher = hashlib.sha256  # the benchmark swaps this to measure the hashing overhead


class _Retryable(Exception):
    """A failure worth another attempt (connection lost, timeout, 5xx)."""


# ---------------------------------------------------------------------------------------------
# cache layout


def default_cache_dir() -> Path:
    """``$SAMPLERKIT_CACHE``, else ``$XDG_CACHE_HOME/samplerkit``, else ``~/.cache/samplerkit``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "samplerkit"


def is_offline() -> bool:
    """True when ``$SAMPLERKIT_OFFLINE`` is set to anything but "", "0", "false" or "no"."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no")


def record_path(path: str | Path) -> Path:
    """The json record kept next to a cached file: ``<file>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_record(path: str | Path) -> dict | None:
    """The record of a cached file ({url, sha256, size, mtime_ns, trusted}) or None. A record
    written before ``trusted`` existed counts as trusted (it may be reset with :func:`forget`)."""
    try:
        record = json.loads(record_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not _SHA256.match(str(record.get("sha256", ""))):
        return None
    return {**record, "trusted": bool(record.get("trusted", True))}


def trusted_sha256(path: str | Path) -> str | None:
    """The trusted digest recorded for ``path`` (see the module docstring), else None."""
    record = read_record(path)
    return record["sha256"] if record and record["trusted"] else None


def write_record(path: str | Path, url: str, sha256: str, trusted: bool = False) -> None:
    """Record url and sha256 of ``path`` (with its size and mtime) atomically next to it; ``trusted``:
    the digest was checked (a published sha256 matched, or the file loaded)."""
    path = Path(path)
    st = path.stat()
    record = {"url": url, "sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "trusted": trusted}
    tmp = record_path(path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, record_path(path))


def _unchanged(path: Path, record: dict | None) -> bool:
    """True when ``path`` still has the size and mtime its record was written with."""
    st = path.stat()
    return bool(record) and (record.get("size"), record.get("mtime_ns")) == (st.st_size, st.st_mtime_ns)


def trust(path: str | Path, url: str = "") -> str:
    """Record the digest of ``path`` as trusted (call it once the file has loaded); returns it."""
    path = Path(path)
    record = read_record(path)
    if record and record["trusted"] and _unchanged(path, record):
        return record["sha256"]
    digest = record["sha256"] if _unchanged(path, record) else sha256_file(path)
    write_record(path, url or (record or {}).get("url", ""), digest, trusted=True)
    return digest


def forget(path: str | Path) -> bool:
    """Delete the record of ``path`` (its trusted digest included); True when there was one."""
    rec = record_path(path)
    existed = rec.is_file()
    rec.unlink(missing_ok=True)
    return existed


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = _hasher()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def drive_file_id(url: str) -> str | None:
    """The file id of a Google Drive link (``/file/d/<id>/...`` or ``?id=<id>``), else None."""
    parts = urlsplit(url)
    if parts.hostname not in DRIVE_HOSTS:
        return None
    m = re.search(r"/file/d/([\w-]+)", parts.path)
    if m:
        return m.group(1)
    ids = parse_qs(parts.query).get("id")
    return ids[0] if ids else None


def filename_for(url: str) -> str:
    """The cache file name a URL gets when none is given: its last path component."""
    file_id = drive_file_id(url)
    if file_id:
        return f"gdrive-{file_id}"
    return Path(unquote(urlsplit(url).path)).name


# ---------------------------------------------------------------------------------------------
# fetch


def fetch(
    url: str,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    filename: str | None = None,
    *,
    retries: int | None = None,
    retry_base: float | None = None,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    label: str | None = None,
) -> Path:
    """Download ``url`` into the cache (once) and return the path of the verified file.

    ``sha256``: expected hex digest (None: accept the file and record its digest, untrusted until
    :func:`trust`; a trusted record is then enforced).
    ``cache_dir``: default :func:`default_cache_dir`. ``filename``: default the URL's last path
    component. ``retries`` / ``retry_base``: default ``$SAMPLERKIT_RETRIES`` (5) and
    ``$SAMPLERKIT_RETRY_BASE`` (1 s); attempt k waits ``retry_base * 2**k`` before it.
    ``label``: the zoo name, named in the advice of a mismatch error.
    Raises :class:`SamplerkitError` with the URL, the reason and the path to place the file at.
    """
    sha256 = _checked_sha256(sha256)
    final = _cache_path(url, cache_dir, filename)
    directory = final.parent
    by_hand = f"download it by hand and save it as {final}"

    if is_offline():
        if not final.is_file():
            raise SamplerkitError(
                f"{url} is not in the cache and {ENV_OFFLINE}=1 forbids downloading; {by_hand}"
            )
        return _verify_cached(final, url, sha256, offline=True, label=label)

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SamplerkitError(f"cannot create the cache dir {directory} ({err.strerror}); set {ENV_CACHE}") from None
    with _locked(final):
        if final.is_file():
            checked = _verify_cached(final, url, sha256, offline=False, label=label)
            if checked is not None:
                return checked
        retries = int(os.environ.get(ENV_RETRIES, 5)) if retries is None else retries
        retry_base = float(os.environ.get(ENV_RETRY_BASE, 1.0)) if retry_base is None else retry_base
        digest = _download(url, final, progress, retries, retry_base, timeout, by_hand)
        return _settle(final, url, digest, sha256, by_hand)


def _checked_sha256(sha256: str | None) -> str | None:
    """An expected digest in lower case, checked to be 64 hex digits (None stays None)."""
    if sha256 is None:
        return None
    sha256 = sha256.strip().lower()
    if not _SHA256.match(sha256):
        raise SamplerkitError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return sha256


def _cache_path(url: str, cache_dir: str | Path | None, filename: str | None) -> Path:
    """Where ``url`` is cached: ``filename`` (default the URL's last path component) in ``cache_dir``."""
    name = filename or filename_for(url)
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise SamplerkitError(f"cannot name a cache file after {url}; pass filename=")
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return directory / name


def _settle(final: Path, url: str, digest: str, sha256: str | None, by_hand: str) -> Path:
    """Move a finished download into place at ``final`` and record its digest; a digest other than the
    expected ``sha256`` removes the partial file instead."""
    part = _part(final)
    if sha256 is not None and digest != sha256:
        part.unlink(missing_ok=True)
        raise SamplerkitError(
            f"{url} downloaded with sha256 {digest}, expected {sha256}; the partial file was removed "
            f"(retry later, or {by_hand})"
        )
    os.replace(part, final)
    _fsync_dir(final.parent)
    write_record(final, url, digest, trusted=sha256 is not None)
    return final


def _verify_cached(final: Path, url: str, sha256: str | None, offline: bool, label: str | None) -> Path | None:
    """``final`` if it matches ``sha256`` or the trusted record (any file when there is neither);
    None (file removed) on a mismatch online; a mismatch offline raises."""
    record = read_record(final)
    trusted = record["sha256"] if record and record["trusted"] else None
    expected = sha256 or trusted
    if _unchanged(final, record) and (expected is None or record["sha256"] == expected):
        return final
    actual = sha256_file(final)
    if expected is None or actual == expected:
        write_record(final, url, actual, trusted=expected is not None)
        return final
    if offline:
        if sha256:
            how = f"replace it with a good copy (or unset {ENV_OFFLINE} to download it again)"
        else:
            reset = (f"download.forget on it (`samplerkit models verify {label}` with reset=True)" if label
                     else f"delete {record_path(final)}")
            how = (f"the expected digest was recorded when the file first loaded; replace it with a good copy, or if "
                   f"this copy is the one you want, forget the recorded digest with {reset}")
        raise SamplerkitError(f"{final} has sha256 {actual}, expected {expected}: it is not the file of {url}; {how}")
    print(f"samplerkit: {final} does not match sha256 {expected}; downloading it again", file=sys.stderr)
    final.unlink()
    record_path(final).unlink(missing_ok=True)
    return None


def _part(final: Path) -> Path:
    return final.with_name(final.name + ".part")


@contextlib.contextmanager
def _locked(final: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``<final>.lock`` (waits, saying so, while another process holds it)."""
    with open(final.with_name(final.name + ".lock"), "a") as lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"samplerkit: waiting for another process downloading {final.name}", file=sys.stderr)
                fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _download(url: str, final: Path, progress: bool, retries: int, retry_base: float, timeout, by_hand: str) -> str:
    """Stream ``url`` into ``<final>.part`` (resuming), retrying; returns the sha256 of the whole part."""
    file_id = drive_file_id(url)
    attempt = 0
    with requests.Session() as session, tqdm(
        desc=final.name, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
        disable=not progress, leave=False,
    ) as bar:
        session.headers.update({"Accept-Encoding": "identity", "User-Agent": "samplerkit"})
        while True:
            try:
                target = _drive_target(session, file_id, timeout, url, by_hand) if file_id else url
                return _transfer(session, target, _part(final), bar, timeout, url, by_hand)
            except _Retryable as err:
                if attempt >= retries:
                    raise SamplerkitError(
                        f"download of {url} failed after {attempt + 1} attempts ({err}); "
                        f"run the command again to resume, or {by_hand}"
                    ) from None
                time.sleep(retry_base * 2**attempt)
                attempt += 1


def _transfer(session: requests.Session, target: str, part: Path, bar, timeout, url: str, by_hand: str) -> str:
    """One attempt: GET ``target`` from the end of ``part`` on, append, return the sha256 of the part."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    response = _get(session, target, headers, timeout)
    with response:
        status = response.status_code
        if status == 416 and offset:  # nothing left to send: the part may already be complete
            total = _content_range(response.headers.get("Content-Range", ""))[2]
            if total == offset:
                return sha256_file(part)
            part.unlink()
            raise _Retryable("the server refused to resume; restarting from byte 0")
        _check_status(response, url, by_hand)
        if status == 206:
            start, _, total = _content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                part.unlink()
                raise _Retryable(f"the server resumed at byte {start}, not {offset}; restarting from byte 0")
        elif status == 200:
            offset, length = 0, response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise SamplerkitError(f"download of {url} failed: unexpected HTTP {status}; {by_hand}")

        h = _hasher()
        if offset:
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(CHUNK_BYTES), b""):
                    h.update(block)
        bar.reset(total=total)
        bar.update(offset)
        written = 0
        with open(part, "ab" if offset else "wb") as f:
            try:
                for chunk in _body(response):
                    f.write(chunk)
                    h.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            except _ReadError as err:
                raise _Retryable(f"connection lost after {offset + written} bytes: {err}") from None
            finally:
                f.flush()
                os.fsync(f.fileno())
    if total is not None and offset + written != total:
        raise _Retryable(f"connection closed after {offset + written} of {total} bytes")
    return h.hexdigest()


class _ReadError(Exception):
    """The body stopped arriving (connection reset or closed early, read timeout)."""


def _body(response: requests.Response) -> Iterator[bytes]:
    """The body in the pieces the socket delivers, so a broken connection loses no received byte."""
    raw = response.raw
    read = raw.read1 if hasattr(raw, "read1") else raw.read  # urllib3 >= 2: read1
    while True:
        try:
            chunk = read(CHUNK_BYTES)
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as err:
            raise _ReadError(type(err).__name__) from None
        if not chunk:
            return
        yield chunk


def _get(session: requests.Session, target: str, headers: dict, timeout) -> requests.Response:
    try:
        return session.get(target, headers=headers, stream=True, timeout=timeout, allow_redirects=True)
    except requests.exceptions.SSLError as err:
        raise SamplerkitError(f"download of {target} failed: {err}") from None
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _Retryable(type(err).__name__) from None


def _check_status(response: requests.Response, url: str, by_hand: str) -> None:
    status = response.status_code
    if status >= 500 or status in (408, 429):
        raise _Retryable(f"HTTP {status}")
    if status >= 400:
        raise SamplerkitError(f"download of {url} failed: HTTP {status} {response.reason}; {by_hand}")


def _content_range(header: str) -> tuple[int | None, int | None, int | None]:
    """``bytes a-b/n`` -> (a, b, n); ``bytes */n`` -> (None, None, n); anything else: Nones."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", header or "")
    if not m:
        return None, None, None
    a, b, n = m.groups()
    return (int(a) if a else None, int(b) if b else None, int(n) if n and n != "*" else None)


# ---------------------------------------------------------------------------------------------
# Google Drive


class _ConfirmPage(HTMLParser):
    """Collects what a Drive "can't scan this file for viruses" page offers to go on."""

    def __init__(self) -> None:
        super().__init__()
        self.form_action: str | None = None
        self.form_fields: dict[str, str] = {}
        self.links: list[str] = []
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and self.form_action is None and ("download" in a.get("action", "")
                                                          or a.get("id") == "download-form"):
            self.form_action, self._in_form = a.get("action", ""), True
        elif tag == "input" and self._in_form and a.get("name"):
            self.form_fields[a["name"]] = a.get("value", "")
        elif tag == "a" and "confirm=" in a.get("href", ""):
            self.links.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def _drive_target(session: requests.Session, file_id: str, timeout, url: str, by_hand: str) -> str:
    """The URL that serves the bytes of Drive file ``file_id``, through the confirmation page if any."""
    first = f"{DRIVE_ENDPOINT}?{urlencode({'export': 'download', 'id': file_id})}"
    response = _get(session, first, {}, timeout)
    with response:
        _check_status(response, url, by_hand)
        if not response.headers.get("Content-Type", "").startswith("text/html"):
            return response.url  # no confirmation needed (small file); fetch again with Range
        page = _ConfirmPage()
        page.feed(response.text)
        cookies = {k: v for k, v in response.cookies.items() if k.startswith("download_warning")}
        base = response.url
    if page.form_action:
        return f"{urljoin(base, page.form_action)}?{urlencode(page.form_fields)}"
    if page.links:
        return urljoin(base, page.links[0])
    if cookies:
        token = next(iter(cookies.values()))
        return f"{DRIVE_ENDPOINT}?{urlencode({'export': 'download', 'confirm': token, 'id': file_id})}"
    raise SamplerkitError(
        f"Google Drive did not offer {url} for download (the file may be private, deleted or over its "
        f"download quota); open the link in a browser and {by_hand}"
    )
