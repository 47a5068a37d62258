"""Downloading weight files into the torch and Hugging Face caches (standard library only).

* :func:`download` fetches a URL into a cache folder: it follows redirects, streams into a
  temporary file in the same folder and renames it into place only once the whole file has
  arrived and its checksum matches, so an interrupted or corrupt download never leaves a
  partial file behind. Concurrent downloaders of the same file (threads or processes) are
  serialised with a lock file; the second one reuses the first one's file.
* :func:`torch_cache_dir` is ``torch.hub``'s checkpoint folder (``$TORCH_HOME/hub/checkpoints``),
  so torchvision weights downloaded by either library are shared.
* :func:`hf_hub_download` fetches ``{HF_ENDPOINT}/{repo}/resolve/{revision}/{filename}`` into
  ``$HF_HOME/hub/models--{org}--{name}/``; it also finds files that ``huggingface_hub`` (e.g.
  timm or transformers) has already cached there, and with ``HF_HUB_OFFLINE=1`` it only uses
  the cache.
* ``RESNET_TUNE_OFFLINE=1`` allows no download at all (cached files only).

Every network failure raises :class:`DownloadError` with one sentence saying what failed and how
to use a local file instead.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from ..errors import ConfigError, ResnetTuneError

__all__ = [
    "ChecksumError",
    "DownloadError",
    "RemoteFileNotFoundError",
    "download",
    "hash_prefix_from_name",
    "hf_cache_dir",
    "hf_endpoint",
    "hf_file_url",
    "hf_hub_download",
    "hf_offline",
    "keras_cache_dir",
    "offline",
    "torch_cache_dir",
]

CHUNK = 1 << 20
TIMEOUT_S = 60.0  # per connection attempt and per read, not for the whole file
USER_AGENT = "resnet-tune (urllib)"
OFFLINE_VAR = "RESNET_TUNE_OFFLINE"
LOCAL_HINT = "download it on a machine with internet access and pass pretrained='/path/to/file' instead"
# torchvision / torch.hub checkpoint names: ``<name>-<first hex digits of the SHA-256>.<ext>``.
HASH_REGEX = re.compile(r"-([a-f0-9]{8,64})\.[A-Za-z0-9.]+$")


class DownloadError(ResnetTuneError, RuntimeError):
    """A weight file could not be fetched (network failure, HTTP error, offline, bad checksum); ``reason`` says
    why in a few words where it is known."""

    reason: str | None = None


class RemoteFileNotFoundError(DownloadError):
    """The server answered 404: the file does not exist there."""


class ChecksumError(DownloadError):
    """The downloaded file's SHA-256 does not match the expected one; the file was removed."""


# --- cache locations -----------------------------------------------------------------------------

def torch_cache_dir() -> Path:
    """``torch.hub``'s checkpoint folder: ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/...``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def keras_cache_dir() -> Path:
    """Keras's model folder: ``$KERAS_HOME/models`` (``~/.keras/models``), so that weights Keras downloaded are
    reused and the other way round."""
    return Path(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")).expanduser() / "models"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub`` (``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline() -> bool:
    """``RESNET_TUNE_OFFLINE=1``: never download; only files already cached are used (an air-gapped machine then
    fails at once instead of waiting for a connection to time out)."""
    return _env_flag(OFFLINE_VAR)


def hf_offline() -> bool:
    return _env_flag("HF_HUB_OFFLINE") or offline()


def hf_file_url(repo_id: str, filename: str, revision: str = "main") -> str:
    quote = urllib.parse.quote
    return f"{hf_endpoint()}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"


def hash_prefix_from_name(filename: str) -> str | None:
    """The SHA-256 prefix in a torchvision-style name (``resnet18-f37072fd.pth`` -> ``f37072fd``).

    A run of decimal digits only (``model-20240101.pth``, a date) is not taken for a hash.
    """
    m = HASH_REGEX.search(filename)
    if m is None or m.group(1).isdigit():
        return None
    return m.group(1)


# --- download ------------------------------------------------------------------------------------

def _fail(url: str, reason: str) -> DownloadError:
    err = DownloadError(f"Could not download {url} ({reason}); {LOCAL_HINT}.")
    err.reason = reason
    return err


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        r = exc.reason
        return str(r) if not isinstance(r, BaseException) else (str(r) or type(r).__name__)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "the connection timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return f"the connection closed after {len(exc.partial)} bytes"
    return str(exc) or type(exc).__name__


def _show_progress(progress: bool) -> bool:
    try:
        return bool(progress) and sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _fetch(url: str, tmp: Path, *, headers: dict[str, str] | None, sha256: str | None,
           hash_prefix: str | None, progress: bool, timeout: float, md5: str | None = None) -> None:
    """Stream ``url`` into ``tmp`` and check its length and hash; raises :class:`DownloadError`."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    for k, v in (headers or {}).items():
        # Not forwarded to the redirect target (a CDN must not receive credentials).
        req.add_unredirected_header(k, v)
    digest = hashlib.sha256()
    digest_md5 = hashlib.md5(usedforsecurity=False) if md5 is not None else None
    received = 0
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = None
            if _show_progress(progress):
                from tqdm.auto import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                           desc=Path(urllib.parse.urlparse(url).path).name or url, leave=False)
            try:
                with open(tmp, "wb") as f:
                    while True:
                        buf = resp.read(CHUNK)
                        if not buf:
                            break
                        f.write(buf)
                        digest.update(buf)
                        if digest_md5 is not None:
                            digest_md5.update(buf)
                        received += len(buf)
                        if bar is not None:
                            bar.update(len(buf))
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                if bar is not None:
                    bar.close()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise RemoteFileNotFoundError(
                f"Could not download {url} (HTTP 404 Not Found: there is no such file); "
                f"check the name, or {LOCAL_HINT}.") from None
        raise _fail(url, _reason(e)) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        # URLError covers refused connections and unresolvable hosts; OSError covers resets and
        # timeouts mid-transfer; ValueError an unsupported or malformed URL.
        raise _fail(url, _reason(e)) from None
    if total is not None and received != total:
        raise _fail(url, f"the connection closed after {received} of {total} bytes")
    actual = digest.hexdigest()
    if sha256 is not None and actual != sha256.lower():
        raise ChecksumError(
            f"The file downloaded from {url} has SHA-256 {actual} but {sha256.lower()} was expected, "
            f"so it was deleted; retry, or {LOCAL_HINT}.")
    if digest_md5 is not None and md5 is not None and digest_md5.hexdigest() != md5.lower():
        raise ChecksumError(
            f"The file downloaded from {url} has MD5 {digest_md5.hexdigest()} but {md5.lower()} was expected "
            f"(the publisher's checksum), so it was deleted; retry, or {LOCAL_HINT}.")
    if hash_prefix is not None and not actual.startswith(hash_prefix.lower()):
        raise ChecksumError(
            f"The file downloaded from {url} has SHA-256 {actual}, which does not start with the "
            f"expected prefix {hash_prefix.lower()} (from its file name), so it was deleted; retry, or {LOCAL_HINT}.")


def download(url: str, dest_dir: str | os.PathLike[str], filename: str | None = None, sha256: str | None = None,
             hash_prefix: str | None = None, progress: bool = True, *, check_hash: bool = False,
             headers: dict[str, str] | None = None, timeout: float = TIMEOUT_S, md5: str | None = None) -> Path:
    """Download ``url`` to ``dest_dir/filename`` unless it is already there; returns the path.

    Args:
        url: ``http(s)://`` URL; redirects are followed.
        dest_dir: the cache folder (created if needed).
        filename: name in the cache; the last component of the URL path by default.
        sha256: expected SHA-256 of the whole file.
        hash_prefix: expected leading hex digits of the SHA-256 (torch.hub's ``hash_prefix``).
        progress: show a progress bar (only when stderr is a terminal).
        check_hash: take ``hash_prefix`` from a torchvision-style name ``<name>-<hex>.<ext>``,
            as ``torch.hub.load_state_dict_from_url(check_hash=True)`` does.
        headers: extra request headers, sent to ``url``'s host only (not after a redirect).
        timeout: seconds for the connection and for each read.
        md5: expected MD5 of the whole file (the checksum Keras publishes for its weights).

    The file appears in the cache only complete and verified. A file that is already cached is
    reused as it is (like torch.hub, its hash is checked when it is downloaded, not on every use).

    Raises:
        DownloadError: network failure, HTTP error or short read (one sentence naming the URL and
            the reason, and how to use a local file instead); ``ChecksumError`` (a subclass) when
            the hash does not match; ``RemoteFileNotFoundError`` (a subclass) for HTTP 404.
    """
    from filelock import FileLock

    if filename is None:
        filename = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
        if not filename:
            raise ConfigError(f"cannot name a cache file after {url!r}; pass filename=")
    if check_hash and hash_prefix is None and sha256 is None:
        hash_prefix = hash_prefix_from_name(filename)
    dest_dir = Path(dest_dir).expanduser()
    dest = dest_dir / filename
    if dest.is_file():
        return dest
    if offline():
        err = DownloadError(f"Could not download {url} ({OFFLINE_VAR}=1 allows no downloads and the file is not in "
                            f"{dest_dir}); unset {OFFLINE_VAR}, put the file there, or {LOCAL_HINT}.")
        err.reason = f"{OFFLINE_VAR}=1 and the file is not cached"
        raise err
    lock_dir = dest_dir / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / f"{filename}.lock")):
        if dest.is_file():  # another thread or process finished it while we waited
            return dest
        tmp = dest_dir / f".{filename}.{uuid.uuid4().hex}.partial"
        try:
            _fetch(url, tmp, headers=headers, sha256=sha256, hash_prefix=hash_prefix, progress=progress,
                   timeout=timeout, md5=md5)
            os.replace(tmp, dest)
        finally:
            # Interrupted, corrupt, or KeyboardInterrupt: nothing partial stays in the cache.
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
    return dest


# --- Hugging Face hub ----------------------------------------------------------------------------

def _hf_repo_dir(repo_id: str) -> Path:
    return hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def _hf_cached(repo_id: str, filename: str, revision: str) -> Path | None:
    """A cached copy, written by us or by ``huggingface_hub`` (``refs/<rev>`` -> ``snapshots/<commit>``)."""
    repo_dir = _hf_repo_dir(repo_id)
    candidates = []
    ref = repo_dir / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
        if commit:
            candidates.append(repo_dir / "snapshots" / commit / filename)
    candidates.append(repo_dir / "snapshots" / revision / filename)
    for path in candidates:
        if path.is_file():  # follows huggingface_hub's symlinks into blobs/
            return path
    return None


def hf_hub_download(repo_id: str, filename: str, revision: str = "main", *, progress: bool = True) -> Path:
    """Fetch one file of a Hugging Face model repository into the HF cache; returns its path.

    A cached copy is used without contacting the server. With ``HF_HUB_OFFLINE=1`` the cache is
    the only source. ``HF_TOKEN``, when set, is sent to the endpoint (for gated repositories).

    Raises:
        DownloadError: the file is not cached and cannot be fetched (``RemoteFileNotFoundError``
            when the repository has no such file).
    """
    cached = _hf_cached(repo_id, filename, revision)
    if cached is not None:
        return cached
    url = hf_file_url(repo_id, filename, revision)
    if hf_offline():
        var = "HF_HUB_OFFLINE" if _env_flag("HF_HUB_OFFLINE") else OFFLINE_VAR
        err = DownloadError(
            f"{var} is set and {repo_id}/{filename} (revision {revision}) is not in the cache "
            f"{hf_cache_dir()}; unset {var}, or {LOCAL_HINT.replace('download it', f'download {url}')}.")
        err.reason = f"{var} is set and the file is not cached"
        raise err
    headers = {}
    token = os.environ.get("HF_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    dest_dir = _hf_repo_dir(repo_id) / "snapshots" / revision / Path(filename).parent
    return download(url, dest_dir, Path(filename).name, progress=progress, headers=headers)
