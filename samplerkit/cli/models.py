"""``samplerkit models list|info|download|verify``: the model zoo from the command line."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from dataclasses import asdict

import click

from .. import download, terminal, zoo
from ..errors import SamplerkitError


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "?"


def _known_size(entry: zoo.ZooEntry) -> int | None:
    if entry.size is not None or entry.family == "builtin":
        return entry.size
    record = download.read_record(entry.local_path())
    return record.get("size") if record else None


def _sampler(rec: dict) -> str:
    knobs = " ".join(f"{k}={v}" for k, v in rec.items() if k not in ("sampler", "steps"))
    return " ".join(s for s in (rec.get("sampler", ""), str(rec.get("steps", "")), knobs) if s)


def _as_dict(entry: zoo.ZooEntry) -> dict:
    d = {k: v for k, v in asdict(entry).items() if k != "loader"}
    d["urls"] = list(entry.urls)
    d["cached"] = entry.is_cached()
    path = entry.local_path()
    d["local_path"] = str(path) if path else None
    if d["size"] is None:
        d["size"] = _known_size(entry)
    d["sha256"] = entry.expected_sha256()
    d["sha256_published"] = entry.sha256 is not None or entry.family == "builtin"  # not from a download record
    record = download.read_record(path) if path and entry.family != "builtin" else None
    d["sha256_recorded"] = record["sha256"] if record else None  # trusted or not
    d["sha256_trusted"] = bool(record and record["trusted"])
    return d


def _sha256_line(d: dict) -> str:
    """The digest `models info` shows, saying where it comes from."""
    if d["sha256_published"] and d["sha256"]:
        return d["sha256"]
    if d["sha256_recorded"] and d["sha256_trusted"]:
        return f"{d['sha256_recorded']} (recorded when the cached file first loaded)"
    if d["sha256_recorded"]:
        return f"{d['sha256_recorded']} (of the cached file; trusted once it loads)"
    if d["cached"] and d["local_path"]:
        return "not published; not recorded yet (`samplerkit models verify NAME` records it)"
    return "not published; recorded when the downloaded file first loads"


@click.group("models")
def command() -> None:
    """Published checkpoints: list, inspect, download and verify the cache.

    \b
    Files are cached in $SAMPLERKIT_CACHE (default ~/.cache/samplerkit); with
    SAMPLERKIT_OFFLINE=1 nothing is downloaded.
    Examples:
      samplerkit models list
      samplerkit models info edm-cifar10-cond-vp
      samplerkit models download adm-imagenet64 iddpm-cifar10
      samplerkit models verify
      samplerkit models verify adm-ip-cifar10 --reset   # forget a recorded digest
    """


_NOT_SAMPLED = ("adm-classifier", "vae")  # families that guide or decode a sampler but are not sampled


def _recommended(entry: zoo.ZooEntry, knobs: bool = True) -> str:
    """The recommended sampler (with its knobs, or a '*' for them), '-' for a classifier or an autoencoder."""
    rec = entry.recommended
    if entry.family in _NOT_SAMPLED or not rec:
        return "-"
    if knobs:
        return _sampler(rec)
    short = _sampler({k: v for k, v in rec.items() if k in ("sampler", "steps")})
    return short + (" *" if set(rec) - {"sampler", "steps"} else "")


def _wide_row(e: zoo.ZooEntry) -> tuple:
    size, sha = _known_size(e), e.expected_sha256()
    return (e.name, e.family, str(e.resolution), "yes" if e.conditional else "no", _size(size) if size else "-",
            "yes" if e.is_cached() else "no", sha[:12] if sha else "-", e.license.split(" (")[0], _recommended(e),
            e.urls[0] if e.urls else "(built in)")


_WIDE = ("NAME", "FAMILY", "RES", "COND", "SIZE", "CACHED", "SHA256", "LICENSE", "RECOMMENDED", "URL")
_CSV = ("name", "family", "resolution", "conditional", "size", "cached", "sha256", "license", "recommended", "url")


@command.command("list")
@click.option("--wide", is_flag=True, help="Every column: also size, sha256, license and URL (wider than 100).")
@click.option("--csv", "as_csv", is_flag=True, help="Every column as CSV, unabbreviated.")
@click.option("--json", "as_json", is_flag=True, help="Print every field of every entry as JSON.")
def list_models(wide: bool, as_csv: bool, as_json: bool) -> None:
    """Every named model: family, resolution, whether cached, recommended sampler.

    --wide adds the file size and sha256 where known (published, or recorded when the file was
    downloaded; '-' until then), the license and the URL; `samplerkit models info NAME` shows one
    entry in full.
    """
    items = zoo.entries()
    if as_json:
        click.echo(json.dumps([_as_dict(e) for e in items], indent=1))
    elif as_csv:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(_CSV)
        for e in items:
            row = list(_wide_row(e))
            row[4], row[6] = _known_size(e) or "", e.expected_sha256() or ""
            writer.writerow(row)
        click.echo(buf.getvalue(), nl=False)
    elif wide:
        click.echo("\n".join(terminal.wrapped_rows(_WIDE, [_wide_row(e) for e in items], width=10**6)))
    else:
        rows = [(e.name, e.family, str(e.resolution), "yes" if e.conditional else "no",
                 "yes" if e.is_cached() else "no", _recommended(e, knobs=False)) for e in items]
        header = ("NAME", "FAMILY", "RES", "COND", "CACHED", "RECOMMENDED")
        click.echo("\n".join(terminal.wrapped_rows(header, rows)))
        click.echo("* and its knobs: `samplerkit models info NAME`; --wide or --csv for size, sha256, license, URL",
                   err=True)


@command.command("info")
@click.argument("name")
def info(name: str) -> None:
    """Everything the zoo knows about NAME, including its upstream flags and cache path."""
    e = zoo.get(name)
    d = _as_dict(e)
    flags = " ".join(f"--{k} {v}" for k, v in e.flags.items())
    lines = [
        ("name", e.name), ("family", e.family), ("dataset", e.dataset), ("resolution", e.resolution),
        ("conditional", f"yes ({e.num_classes} classes)" if e.conditional else "no"),
        ("training", f"T={e.T}, {e.schedule} schedule" if e.T else f"continuous time, {e.schedule}"),
        ("recommended", _recommended(e)),
        ("eps scaler", f"--eps-scaler {e.eps_scaler['b']} with {e.eps_scaler['sampler']} {e.eps_scaler['steps']} steps "
                        f"({e.eps_scaler['source']})"
         if e.eps_scaler else "-"),
        ("flags", flags or "-"),
        ("urls", " ".join(e.urls) or "(built in)"), ("file", e.filename or "-"),
        ("size", _size(d["size"]) if d["size"] else "not published; known once the file is downloaded"),
        ("sha256", _sha256_line(d)),
        ("license", e.license), ("source", e.source), ("cache", d["local_path"] or "-"),
        ("cached", "yes" if d["cached"] else "no"), ("notes", e.notes or "-"),
    ]
    for key, value in lines:
        if key == "sha256":  # a digest and where it comes from stay on one line
            click.echo(f"{key + ':':13}{value}")
            continue
        pieces = textwrap.wrap(str(value), terminal.WIDTH - 13, break_long_words=False, break_on_hyphens=False)
        click.echo(f"{key + ':':13}" + f"\n{'':13}".join(pieces or [""]))  # a URL or a path stays whole


@command.command("download")
@click.argument("names", nargs=-1, required=True)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def download_models(names: tuple[str, ...], no_progress: bool) -> None:
    """Download NAMES into the cache (resumes a partial file; verifies sha256); prints each path."""
    entries = [zoo.get(n) for n in names]
    for e in entries:
        if e.family == "builtin":
            click.echo(f"{e.name}: built in, nothing to download")
            continue
        click.echo(str(e.download(progress=not no_progress)))


@command.command("verify")
@click.argument("names", nargs=-1)
@click.option("--reset", is_flag=True,
              help="Forget the digest recorded for NAMES and record the cached file's own (trusted once it loads).")
def verify(names: tuple[str, ...], reset: bool) -> None:
    """Re-hash cached files: OK, MISMATCH, MISSING (recorded but gone) or PENDING (digest recorded
    now, trusted once the file loads).

    With NAMES, check those entries (an entry not in the cache is MISSING); without, every
    cached zoo file and every other file with a download record in the cache dir. A file whose
    recorded digest is wrong -- e.g. recorded from a broken copy before it was replaced -- is
    reset with `samplerkit models verify NAME --reset` (a published sha256 cannot be reset).

    \b
    Examples:
      samplerkit models verify
      samplerkit models verify adm-ip-cifar10 --reset
    """
    if reset and not names:
        raise SamplerkitError("--reset needs the NAMES of the models whose recorded digest to forget")
    cache = download.default_cache_dir()
    targets = _verify_targets(names, reset, cache)
    if not targets:
        click.echo(f"nothing cached in {cache}")
        return
    bad = []
    for path, (label, url, expected) in targets.items():
        status = _verify_file(path, url, expected)
        if status in ("MISSING", "MISMATCH"):
            bad.append(f"{label} {status.lower()}")
        click.echo(f"{status:9}{label:28}{path}")
    if bad:
        raise SamplerkitError(
            f"{len(bad)} of {len(targets)} cache file(s) failed: {', '.join(bad)}; "
            "re-download with `samplerkit models download NAME`, or if the cached copy is the good one, "
            "forget the recorded digest with `samplerkit models verify NAME --reset`"
        )


def _verify_targets(names: tuple[str, ...], reset: bool, cache) -> dict:
    """path -> (label, url, expected sha256 or None) of the files `models verify` checks: the named zoo
    entries (their recorded digest forgotten with ``reset``), else every cached zoo file and every other
    file with a download record in ``cache``."""
    targets: dict = {}
    for e in (zoo.get(n) for n in names) if names else zoo.entries():
        if e.family == "builtin":
            if reset:
                raise SamplerkitError(f"{e.name} is a built-in model; it has no recorded digest to reset")
            continue
        path = e.local_path()
        if reset and e.sha256:
            raise SamplerkitError(f"{e.name} has a published sha256, which cannot be reset; "
                                  f"replace {path} with a good copy or delete it to download it again")
        if reset:
            download.forget(path)
        if names or path.is_file() or download.read_record(path):
            targets[path] = (e.name, e.urls[0], e.expected_sha256())
    if not names and cache.is_dir():
        for rec in sorted(cache.glob("*.json")):
            path = rec.with_name(rec.name[: -len(".json")])
            record = download.read_record(path)
            if record and path not in targets:
                targets[path] = (path.name, record.get("url", ""), download.trusted_sha256(path))
    return targets


def _verify_file(path, url: str, expected: str | None) -> str:
    """MISSING, PENDING (digest recorded now, trusted once the file loads), OK or MISMATCH."""
    if not path.is_file():
        return "MISSING"
    actual = download.sha256_file(path)
    if expected is None:
        download.write_record(path, url, actual, trusted=False)
        return "PENDING"
    if actual == expected:
        download.write_record(path, url, actual, trusted=True)
        return "OK"
    return "MISMATCH"
