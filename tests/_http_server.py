"""A file server on 127.0.0.1 for the download tests: Range support, fault injection, a request log,
and an imitation of Google Drive's large-file confirmation step.

    with FileServer() as srv:
        srv.add("/a.bin", payload)
        srv.faults["/a.bin"] = ["drop:0.5"]      # consumed one per request, in order
        fetch(srv.url("/a.bin"), ...)
        srv.log  # [Hit(path, range, status, sent), ...]

Faults: ``status:N`` (answer N with no body), ``drop:F`` (announce the full length, send the
fraction F of it, close the connection), ``stall:S`` (sleep S seconds, then close without an
answer), ``bad-range`` (answer 206 with a Content-Range that starts at 0).
Drive imitation: ``srv.add_drive(file_id, path, style)`` with style ``cookie`` (warning page,
token only in a ``download_warning`` cookie), ``link`` (token in a ``confirm=`` link) or
``form`` (drive.usercontent.google.com's form with confirm=t and a uuid) or ``direct`` (a small
file: the bytes at once); the endpoint is
``srv.url("/uc")``; style ``quota`` serves a page that offers nothing.

:func:`fetch_after_marker` runs ``fetch`` in a spawned process after touching a marker file.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Hit:
    path: str
    range: str | None
    status: int
    sent: int = 0
    # set when the handler that served this hit has returned, so ``sent`` is final
    done: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)


@dataclass
class _File:
    body: bytes
    ignore_range: bool = False
    chunk_delay: float = 0.0  # seconds slept after each 64 KiB written


@dataclass
class _Drive:
    path: str
    style: str
    token: str = "Tk3n"
    uuid: str = "1b2c3d4e-uuid"
    pages: int = 0  # how many warning pages were served


@dataclass
class FileServer:
    files: dict = field(default_factory=dict)
    faults: dict = field(default_factory=dict)
    drive: dict = field(default_factory=dict)
    log: list = field(default_factory=list)

    def add(self, path: str, body: bytes, ignore_range: bool = False, chunk_delay: float = 0.0) -> str:
        self.files[path] = _File(body, ignore_range, chunk_delay)
        return self.url(path)

    def add_drive(self, file_id: str, body: bytes, style: str) -> _Drive:
        self.add(f"/drive-bytes/{file_id}", body)
        self.drive[file_id] = _Drive(f"/drive-bytes/{file_id}", style)
        return self.drive[file_id]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str) -> list[Hit]:
        """The requests for ``path``, each waited for until its handler returned: a client can read
        the last byte before the server thread has counted it in ``sent``."""
        found = [h for h in self.log if h.path == path]
        for h in found:
            h.done.wait(timeout=10)
        return found

    def __enter__(self) -> FileServer:
        server = self

        class Handler(_Handler):
            state = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    state: FileServer
    protocol_version = "HTTP/1.0"  # one response per connection

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._hits: list[Hit] = []
        try:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if parts.path == "/uc":
                return self._drive_uc(query)
            if parts.path == "/download":
                return self._drive_usercontent(query)
            self._serve(parts.path)
        finally:
            for hit in self._hits:
                hit.done.set()

    def _record(self, path: str) -> Hit:
        hit = Hit(path, self.headers.get("Range"), 0)
        self._hits.append(hit)
        self.state.log.append(hit)
        return hit

    # -- plain files ---------------------------------------------------------------------------

    def _serve(self, path: str) -> None:
        st = self.state
        rng = self.headers.get("Range")
        hit = self._record(path)
        fault = st.faults.get(path, []).pop(0) if st.faults.get(path) else None
        if path not in st.files:
            return self._answer(hit, 404, b"not found")
        f = st.files[path]
        if fault and fault.startswith("status:"):
            return self._answer(hit, int(fault.split(":")[1]), b"injected")
        if fault and fault.startswith("stall:"):
            hit.status = -1
            time.sleep(float(fault.split(":")[1]))
            self.close_connection = True
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and not f.ignore_range:
            start = int(m.group(1))
            if start >= len(f.body):
                hit.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(f.body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = f.body[start:]
        partial = bool(start) or fault == "bad-range"
        hit.status = 206 if partial else 200
        self.send_response(hit.status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if partial:  # bad-range: claims to start at byte 0 whatever was asked
            first = 0 if fault == "bad-range" else start
            self.send_header("Content-Range", f"bytes {first}-{len(f.body) - 1}/{len(f.body)}")
        self.end_headers()
        limit = len(body)
        if fault and fault.startswith("drop:"):
            limit = int(len(body) * float(fault.split(":")[1]))
        self._write(hit, body[:limit], f.chunk_delay)
        if limit < len(body):
            self.close_connection = True
            self.wfile.flush()
            self.connection.close()

    def _write(self, hit: Hit, data: bytes, chunk_delay: float) -> None:
        step = 1 << 16
        try:
            for i in range(0, len(data), step):
                self.wfile.write(data[i : i + step])
                hit.sent += len(data[i : i + step])
                if chunk_delay:
                    time.sleep(chunk_delay)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _answer(self, hit: Hit, status: int, body: bytes, content_type: str = "text/plain", headers=()) -> None:
        hit.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    # -- Google Drive imitation ----------------------------------------------------------------

    def _drive_uc(self, q: dict) -> None:
        hit = self._record("/uc")
        d = self.state.drive.get(q.get("id", ""))
        if d is None or q.get("export") != "download":
            return self._answer(hit, 404, b"<html>not found</html>", "text/html")
        if d.style == "direct" or (d.style in ("cookie", "link") and q.get("confirm") == d.token):
            self.state.log.remove(hit)  # logged as the file it serves
            return self._serve(d.path)
        d.pages += 1
        page, headers = "<html><body><p>Google Drive can't scan this file for viruses.</p>", []
        if d.style == "cookie":
            headers = [("Set-Cookie", f"download_warning_13058876669334088843_{q['id']}={d.token}; Path=/")]
        elif d.style == "link":
            page += f'<a id="uc-download-link" href="/uc?export=download&amp;confirm={d.token}&amp;id={q["id"]}">'
            page += "Download anyway</a>"
        elif d.style == "form":
            page += (
                f'<form id="download-form" action="{self.state.url("/download")}" method="get">'
                '<input type="submit" id="uc-download-link" value="Download anyway"/>'
                f'<input type="hidden" name="id" value="{q["id"]}">'
                '<input type="hidden" name="export" value="download">'
                '<input type="hidden" name="confirm" value="t">'
                f'<input type="hidden" name="uuid" value="{d.uuid}"></form>'
            )
        self._answer(hit, 200, (page + "</body></html>").encode(), "text/html; charset=utf-8", headers)

    def _drive_usercontent(self, q: dict) -> None:
        d = self.state.drive.get(q.get("id", ""))
        if d is None or d.style != "form" or q.get("confirm") != "t" or q.get("uuid") != d.uuid:
            hit = self._record("/download")
            return self._answer(hit, 403, b"<html>forbidden</html>", "text/html")
        self._serve(d.path)


def fetch_after_marker(marker: str, **kwargs) -> None:
    """Child-process body: announce the start by creating ``marker``, then download."""
    from pathlib import Path

    from samplerkit.download import fetch

    Path(marker).touch()
    fetch(**kwargs)
