"""The image cache: `qemuvm image pull`, and disks that name a `url:` or a catalog `image:`.

A file enters the cache only once its digest matched: it downloads to a partial file beside the cache, is
hashed as it arrives, fsynced and renamed to its content address (`sha256-HEX`), 0400. A second pull of a
digest it holds makes no request. Beside each image, `sha256-HEX.json` says where it came from (the URL
without credentials), its format and when it was last used (`image prune` removes the least recently used).

Downloads resume: a partial file (`.partial/KEY`, KEY from the URL and digest) continues with an HTTP Range
request after an interruption, a `kill -9` or a failed attempt (retried with backoff); a flock per KEY makes a
second pull of the same image wait for the first and then find it cached. A redirect is followed, but never
from https to http. Credentials in a URL are sent as HTTP basic auth and never printed or stored.

The HTTP client is the standard library's urllib: Range, redirects and timeouts are all it takes, and `up`
imports this module only for a profile with a url disk; a third-party client would add a dependency (and its
import time) for no capability we use.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemuvm.errors import OperationError, UsageError
from qemuvm.runtime import instance, records
from qemuvm.runtime.atomic import read_json, write_json_atomic

if TYPE_CHECKING:
    from qemuvm.profile.model import Profile

CHUNK = 1 << 20
SUMS_MAX = 1 << 20  # a checksum file is a few KiB; anything past this is not one
TIMEOUT = 30.0  # seconds a connection or a read may take before the attempt counts as failed
RETRIES = 3  # further attempts after a failed one (connection lost, timeout, HTTP 5xx), each resuming
_QCOW2_MAGIC = b"QFI\xfb"


@dataclasses.dataclass(frozen=True)
class Digest:
    algorithm: str  # sha256 | sha512
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        found = re.fullmatch(r"(sha256|sha512):([0-9a-fA-F]+)", text.strip())
        if not found or len(found.group(2)) != {"sha256": 64, "sha512": 128}[found.group(1)]:
            raise UsageError(f"digest {text!r}: give sha256:HEX (64 hex digits) or sha512:HEX (128)")
        return cls(found.group(1), found.group(2).lower())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def name(self) -> str:
        """Its file name in the cache."""
        return f"{self.algorithm}-{self.hex}"


@dataclasses.dataclass
class Cached:
    """An image in the cache (`image ls --json`, `image pull --json`)."""

    path: str = ""
    digest: str = ""  # from the file's name, never from its note
    size: int = 0
    url: str | None = None
    format: str = "raw"
    pulled_at: float = 0.0
    used_at: float = 0.0


# A download's progress: (bytes so far, total bytes or None when the server does not say), called per chunk.
Progress = Callable[[int, "int | None"], None]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qemuvm" / "images"


def public_url(url: str) -> str:
    """`url` without user and password: what is printed and stored."""
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # a malformed host or port raises here
    except ValueError:
        return re.sub(r"//[^/@]*@", "//", url)  # unparsable: at least no userinfo
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))


# -- the checksum files distributions publish ------------------------------------------------------------------

_GNU = re.compile(r"^([0-9a-fA-F]{64}|[0-9a-fA-F]{128})\s+\*?(.+?)\s*$")
_BSD = re.compile(r"^(SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$")


def digest_from_sums(text: str, file_name: str, where: str) -> Digest:
    """The digest `text` (a SHA256SUMS/SHA512SUMS file, GNU `HEX  name` or BSD `SHA256 (name) = HEX` lines)
    gives `file_name`; UsageError naming `where` when it lists no such file."""
    for line in text.splitlines():
        gnu, bsd = _GNU.match(line), _BSD.match(line)
        if gnu and os.path.basename(gnu.group(2)) == file_name:
            return Digest("sha256" if len(gnu.group(1)) == 64 else "sha512", gnu.group(1).lower())
        if bsd and os.path.basename(bsd.group(2)) == file_name:
            return Digest.parse(f"{bsd.group(1).lower()}:{bsd.group(3)}")
    raise UsageError(f"{where} lists no digest for {file_name}")


# -- HTTP --------------------------------------------------------------------------------------------------------


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if req.full_url.startswith("https:") and not newurl.startswith("https:"):
            raise OperationError(f"{public_url(req.full_url)} redirects to {public_url(newurl)}: refused, a "
                                 "download never goes from https to plain http")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_NoDowngrade())


def _request(url: str, headers: dict[str, str] | None = None) -> urllib.request.Request:
    parts = urllib.parse.urlsplit(url)
    request = urllib.request.Request(public_url(url), headers={"User-Agent": "qemuvm", **(headers or {})})
    if parts.username is not None:
        token = base64.b64encode(f"{urllib.parse.unquote(parts.username)}:"
                                 f"{urllib.parse.unquote(parts.password or '')}".encode()).decode()
        request.add_unredirected_header("Authorization", f"Basic {token}")  # never sent on to a redirect
    return request


def _http_failure(url: str, exc: BaseException, timeout: float = TIMEOUT) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"{public_url(url)}: HTTP {exc.code} {exc.reason}"
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
        return f"{public_url(url)}: nothing arrived for {timeout:g} s"
    return f"{public_url(url)}: {reason}"


class SumsUnreachable(OperationError):
    """The checksum file could not be read (offline, its server down)."""


def fetch_text(url: str, timeout: float = TIMEOUT) -> str:
    """A small text resource (a checksum file), at most SUMS_MAX bytes."""
    try:
        with _OPENER.open(_request(url), timeout=timeout) as response:
            body = response.read(SUMS_MAX + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SumsUnreachable(f"could not read the checksum file {_http_failure(url, exc, timeout)}") from None
    if len(body) > SUMS_MAX:
        raise OperationError(f"{public_url(url)} is over {SUMS_MAX >> 10} KiB: not a checksum file")
    return body.decode("utf-8", errors="replace")


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code == 429
    return isinstance(exc, (urllib.error.URLError, OSError, ConnectionError, TimeoutError)) and not (
        isinstance(exc, OSError) and exc.errno == errno.ENOSPC)


def _download_once(url: str, part: Path, hasher: Any, progress: Progress | None, timeout: float) -> Any:
    """One attempt: continue `part` from its size (HTTP Range), hashing and appending what arrives. Returns
    the hasher, a new one when the server ignored the Range and sent the whole file again."""
    have = part.stat().st_size if part.exists() else 0
    request = _request(url, {"Range": f"bytes={have}-"} if have else None)
    with _OPENER.open(request, timeout=timeout) as response:
        if have and response.status == 206:
            start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not start or int(start.group(1)) != have:
                raise OSError(f"the server resumed at the wrong place ({response.headers.get('Content-Range')})")
        elif have:
            hasher = hashlib.new(hasher.name)  # no Range support: the whole file comes again
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        with open(part, "r+b" if have else "wb") as out:
            out.seek(have)
            out.truncate()
            if progress:
                progress(have, total)
            while chunk := response.read1(CHUNK):  # what has arrived, up to CHUNK: progress moves, writes land
                out.write(chunk)
                hasher.update(chunk)
                have += len(chunk)
                if progress:
                    progress(have, total)
            out.flush()
            os.fsync(out.fileno())
        if total is not None and have != total:
            raise ConnectionError(f"the connection closed after {have} of {total} bytes")
    return hasher


def _hash_of(path: Path, algorithm: str) -> Any:
    hasher = hashlib.new(algorithm)
    if path.exists():
        with open(path, "rb") as existing:
            while chunk := existing.read(CHUNK):
                hasher.update(chunk)
    return hasher


# -- the cache ---------------------------------------------------------------------------------------------------


def _meta_path(image: Path) -> Path:
    return image.with_name(image.name + ".json")


def _read_meta(image: Path) -> Cached | None:
    """The cached `image` with its note (a missing or damaged note reads as defaults: the image is what counts)."""
    try:
        size = image.stat().st_size
    except OSError:
        return None
    algorithm, _, hex_ = image.name.partition("-")
    noted = records.fitting(Cached, read_json(_meta_path(image)) or {})
    return dataclasses.replace(noted, path=str(image), digest=f"{algorithm}:{hex_}", size=size)


def _write_meta(cached: Cached) -> None:
    path = _meta_path(Path(cached.path))
    with contextlib.suppress(OSError):  # the image is what counts; a lost note only loses prune's ordering
        write_json_atomic(path, dataclasses.asdict(cached))


def lookup(digest: Digest, cache: Path | None = None, use: bool = True) -> Cached | None:
    """The cached image with this digest, or None; `use` marks it used now (prune keeps the recently used), which
    naming it (render, exports) does not."""
    found = _read_meta((cache or cache_dir()) / digest.name)
    if found is not None and use:
        found.used_at = time.time()
        _write_meta(found)
    return found


def _format_of(path: Path) -> str:
    with open(path, "rb") as image:
        return "qcow2" if image.read(4) == _QCOW2_MAGIC else "raw"


def pull(url: str, digest: Digest | None = None, *, sums: str | None = None, insecure: bool = False,
         progress: Progress | None = None, note: Callable[[str], None] = lambda _: None,
         timeout: float = TIMEOUT, retries: int = RETRIES, cache: Path | None = None) -> Cached:
    """`url`'s image in the cache, downloaded unless its digest is there already. The digest comes from
    `digest`, or from the checksum file `sums`; with neither, only `insecure` allows it (the digest is then
    what arrived)."""
    if not re.match(r"^https?://[^/\s]+", url):
        raise UsageError(f"{public_url(url)}: only http:// and https:// URLs can be pulled")
    for checked in (url, sums):
        try:
            _ = urllib.parse.urlsplit(checked or "").port
        except ValueError as exc:
            raise UsageError(f"{public_url(checked or '')} is not a valid URL ({exc})") from None
    if digest is None and sums is not None:
        file_name = os.path.basename(urllib.parse.urlsplit(url).path)
        digest = digest_from_sums(fetch_text(sums, timeout), file_name, public_url(sums))
    if digest is None and not insecure:
        raise UsageError(f"{public_url(url)}: give --digest sha256:HEX or --sums URL to verify the download "
                         "(or --insecure-no-digest to trust whatever arrives)")
    folder = cache or cache_dir()
    if digest is not None and (hit := lookup(digest, folder)) is not None:
        return hit
    try:
        instance.create_dir(folder / ".partial")
    except OSError as exc:
        raise _unusable(folder, exc) from None
    key = hashlib.sha256(f"{public_url(url)} {digest}".encode()).hexdigest()[:32]
    part = folder / ".partial" / key
    with _one_download(folder / ".partial" / f"{key}.lock", lambda: note(
            f"another pull of {public_url(url)} is under way; waiting for it …")):
        if digest is not None and (hit := lookup(digest, folder)) is not None:
            return hit  # the pull we waited for put it there
        return _download(url, digest, part, folder, progress, note, timeout, retries)


@contextlib.contextmanager
def _one_download(lock: Path, waiting: Callable[[], None]) -> Iterator[None]:
    """One download per image at a time: a second pull says it waits, then waits (as long as the first takes)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(instance.locked(lock, timeout=None))
        except instance.LockTimeout:
            waiting()
            stack.enter_context(instance.locked(lock, timeout=24 * 3600))
        yield


def _download(url: str, digest: Digest | None, part: Path, folder: Path, progress: Progress | None,
              note: Callable[[str], None], timeout: float, retries: int) -> Cached:
    algorithm = digest.algorithm if digest else "sha256"
    hasher = _hash_of(part, algorithm)  # a partial file from an earlier attempt: continued, not started over
    if part.exists() and part.stat().st_size:
        note(f"resuming {public_url(url)} at {part.stat().st_size} bytes")
    for attempt in range(retries + 1):
        try:
            hasher = _download_once(url, part, hasher, progress, timeout)
            break
        except OperationError:
            raise
        except (urllib.error.URLError, OSError, ValueError) as exc:  # HTTPError, timeouts, resets are among them
            if isinstance(exc, urllib.error.HTTPError) and exc.code == 416 and part.exists() \
                    and part.stat().st_size:
                break  # every byte is here already (a pull stopped before its rename): the digest decides
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                part.unlink(missing_ok=True)
                raise OperationError(f"no space left on the device of {folder} while pulling {public_url(url)}; "
                                     "the partial file is removed and the cache is as it was") from None
            if not _retryable(exc) or attempt == retries:
                raise OperationError(f"could not pull {_http_failure(url, exc, timeout)}"
                                     + (f" (after {attempt + 1} attempts)" if attempt else "")) from None
            wait = min(2.0 ** attempt, 10.0)
            note(f"{_http_failure(url, exc, timeout)}; retrying in {wait:g} s")
            time.sleep(wait)
            hasher = _hash_of(part, algorithm)
    actual = Digest(algorithm, hasher.hexdigest())
    if digest is not None and actual != digest:
        part.unlink(missing_ok=True)
        raise UsageError(f"{public_url(url)} does not match its digest: expected {digest}, got {actual}; "
                         "nothing was cached")
    image = folder / actual.name
    os.chmod(part, 0o400)
    os.replace(part, image)
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    now = time.time()
    cached = Cached(path=str(image), digest=str(actual), size=image.stat().st_size, url=public_url(url),
                    format=_format_of(image), pulled_at=now, used_at=now)
    _write_meta(cached)
    return cached


def _unusable(folder: Path, exc: OSError) -> UsageError:
    return UsageError(f"the image cache {folder} cannot be used ({exc.strerror or exc}); set XDG_CACHE_HOME to a "
                      "folder of your own")


def list_cached(cache: Path | None = None) -> list[Cached]:
    folder = cache or cache_dir()
    try:
        names = sorted(entry.name for entry in os.scandir(folder)
                       if re.fullmatch(r"sha(256|512)-[0-9a-f]+", entry.name))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise _unusable(folder, exc) from None
    return [found for name in names if (found := _read_meta(folder / name)) is not None]


def remove(what: str, cache: Path | None = None) -> list[Cached]:
    """Remove the images `what` names: a digest (sha256:HEX), a prefix of one (at least 8 hex digits), or a URL
    they were pulled from. UsageError when nothing matches."""
    wanted = what.strip()
    matches = [c for c in list_cached(cache) if c.digest == wanted or c.url == public_url(wanted)
               or (len(wanted) >= 8 and c.digest.split(":", 1)[1].startswith(wanted.split(":", 1)[-1]))]
    if not matches:
        raise UsageError(f"no cached image matches {public_url(wanted)} (see `qemuvm image ls`)")
    for cached in matches:
        Path(cached.path).unlink(missing_ok=True)
        _meta_path(Path(cached.path)).unlink(missing_ok=True)
    return matches


def prune(keep: int = 0, cache: Path | None = None) -> list[Cached]:
    """Remove the least recently used images until the rest take at most `keep` bytes."""
    images = sorted(list_cached(cache), key=lambda c: c.used_at or c.pulled_at)
    total = sum(c.size for c in images)
    removed = []
    for cached in images:
        if total <= keep:
            break
        Path(cached.path).unlink(missing_ok=True)
        _meta_path(Path(cached.path)).unlink(missing_ok=True)
        total -= cached.size
        removed.append(cached)
    return removed


# -- profiles: disks with url: or image: -------------------------------------------------------------------------


def resolve_disks(profile: Profile, *, pull: bool = True, progress: Progress | None = None,
                  note: Callable[[str], None] = lambda _: None) -> Profile:
    """`profile` with each url or catalog image disk as the file it is in the cache, pulled first when `pull`.

    Such a disk always runs on an overlay in the instance folder (ephemeral), so the cached image is never
    written. Without `pull` (render, exports) an image not in the cache yet is named by the path it will have
    once pulled, when its digest is known, and `note` says it is not pulled yet."""
    from qemuvm.runtime import catalog

    disks = []
    for index, disk in enumerate(profile.disks):
        if disk.file is not None:
            disks.append(disk)
            continue
        url, sums, image_format = disk.url, disk.sums, disk.format
        if disk.image is not None:
            entry = catalog.find(disk.image, profile.machine.arch)
            url, sums, image_format = entry.url, entry.sums, image_format or entry.format
        assert url is not None  # the model allows no disk without file, url or image
        digest = Digest.parse(disk.digest) if disk.digest else None
        if pull:
            note(f"disks[{index}]: {public_url(url)}")
            found = _pull_for_disk(url, digest, sums, progress, note)
            path, image_format = found.path, image_format or found.format
        else:
            found = lookup(digest, use=False) if digest else _by_url(url)
            path = found.path if found else str(cache_dir() / (digest.name if digest else "not-pulled-yet"))
            note(f"disks[{index}]: {public_url(url)} is {path}, the overlay's backing file" if found else
                 f"disks[{index}]: {public_url(url)} is not pulled yet (`qemuvm image pull` or `up` pulls it"
                 f"{f' to {path}' if digest else ''})")
            image_format = image_format or (found.format if found else "qcow2")
        disks.append(disk.model_copy(update={"file": path, "url": None, "image": None, "digest": None, "sums": None,
                                             "format": image_format, "ephemeral": True}))
    return profile.model_copy(update={"disks": disks})


def _by_url(url: str) -> Cached | None:
    """The newest cached image pulled from `url`."""
    pulled = [c for c in list_cached() if c.url == public_url(url)]
    return max(pulled, key=lambda c: c.pulled_at) if pulled else None


def _pull_for_disk(url: str, digest: Digest | None, sums: str | None, progress: Progress | None,
                   note: Callable[[str], None]) -> Cached:
    try:
        return pull(url, digest, sums=sums, progress=progress, note=note)
    except SumsUnreachable as exc:
        # Offline: an image pulled from this URL before still boots.
        earlier = _by_url(url)
        if earlier is None:
            raise
        note(f"{exc}; using {earlier.path}, pulled from it before")
        return earlier
