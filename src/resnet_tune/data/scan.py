"""Decode every file of a dataset once before training, and report what is wrong with it.

:func:`scan` fully decodes each file (in threads: Pillow releases the GIL while decoding) with the same
code the training loader uses (:func:`resnet_tune.data.datasets.decode_image`), so that a bad file is found
before the first epoch instead of crashing a worker in the middle of one.  Results are cached per file by
(absolute path, size, mtime_ns), so scanning an unchanged dataset again decodes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import PIL
from PIL import ImageFile

from ..fileio import write_text_atomic
from .datasets import IMAGE_EXTENSIONS
from .images import BadImageError, decode_image

__all__ = ["IMBALANCE_RATIO", "TINY_SIDE", "ScanReport", "default_cache_dir", "scan"]

log = logging.getLogger(__name__)

Sample = tuple[str, int]

#: Warn about class imbalance when the largest class has more than this many times the smallest's images.
IMBALANCE_RATIO = 5.0
#: Warn about images whose shorter side is below this many pixels.
TINY_SIDE = 32
#: Bump when what a cached result means changes; the Pillow version is part of the cache key as well.
_CACHE_VERSION = 1


@dataclass
class ScanReport:
    """What a :func:`scan` found.  Paths are the sample paths as given to :func:`scan`."""

    bad: dict[str, str] = field(default_factory=dict)  # path -> reason
    converted: dict[str, str] = field(default_factory=dict)  # path -> conversion applied
    rotated: list[str] = field(default_factory=list)  # EXIF orientation applied
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # good images: (w, h) after rotation
    class_counts: dict[str, int] = field(default_factory=dict)  # good images per class
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cached: int = 0  # results taken from the cache
    decoded: int = 0  # files decoded by this scan
    root: str = ""  # common folder of the scanned files (for short names in the summary)

    @property
    def total(self) -> int:
        """Files scanned (good and bad)."""
        return len(self.sizes) + len(self.bad)

    @property
    def ok(self) -> int:
        """Good images."""
        return len(self.sizes)

    def good(self, samples: Sequence[Sample]) -> list[Sample]:
        """``samples`` without the bad files."""
        return [s for s in samples if os.fspath(s[0]) not in self.bad]

    def max_side(self) -> int:
        """The longest side of any good image (0 when there is none)."""
        return max((max(wh) for wh in self.sizes.values()), default=0)

    def median_size(self) -> tuple[int, int]:
        """The median (width, height) of the good images ((0, 0) when there is none)."""
        if not self.sizes:
            return (0, 0)
        return (
            int(statistics.median_low(w for w, _ in self.sizes.values())),
            int(statistics.median_low(h for _, h in self.sizes.values())),
        )

    def _name(self, path: str) -> str:
        if self.root:
            try:
                return os.path.relpath(path, self.root)
            except ValueError:
                pass
        return path

    def summary(self, max_bad: int = 10) -> str:
        """A few lines for the console: counts, bad files, conversions, rotations and warnings."""
        cache = f", {self.cached} from cache" if self.cached else ""
        lines = [f"Scanned {self.total} files in {self.seconds:.1f} s{cache}: {self.ok} ok, {len(self.bad)} bad."]
        if self.bad:
            lines.append("Bad files (skipped):")
            for path, reason in list(self.bad.items())[:max_bad]:
                lines.append(f"  {self._name(path)}: {reason}")
            if len(self.bad) > max_bad:
                lines.append(f"  ... and {len(self.bad) - max_bad} more (see bad_files.txt)")
        if self.converted:
            kinds = Counter(self.converted.values())
            lines.append("Converted: " + "; ".join(f"{n} x {kind}" for kind, n in sorted(kinds.items())) + ".")
        if self.rotated:
            lines.append(f"EXIF orientation applied to {len(self.rotated)} image(s).")
        lines.extend(f"Warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sizes"] = {k: list(v) for k, v in self.sizes.items()}
        d.update(total=self.total, ok=self.ok, max_side=self.max_side(), median_size=list(self.median_size()))
        return d

    def write(self, run_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``data_scan.json`` (everything) and ``bad_files.txt`` (``path<TAB>reason`` lines) to ``run_dir``."""
        out = Path(run_dir)
        out.mkdir(parents=True, exist_ok=True)
        json_path, bad_path = out / "data_scan.json", out / "bad_files.txt"
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        bad_path.write_text("".join(f"{p}\t{r}\n" for p, r in self.bad.items()), encoding="utf-8")
        return json_path, bad_path


# ----------------------------------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/resnet_tune/scan``, or ``~/.cache/resnet_tune/scan``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "resnet_tune" / "scan"


def _common_root(paths: Sequence[str]) -> str:
    if not paths:
        return ""
    try:
        root = os.path.commonpath(paths)
    except ValueError:  # different drives
        return ""
    return root if len(paths) > 1 else os.path.dirname(root)


def _cache_file(cache_dir: Path, root: str) -> Path:
    digest = hashlib.sha256(root.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return cache_dir / f"{digest}.json"


def _cache_stamp() -> dict[str, Any]:
    return {"version": _CACHE_VERSION, "pillow": PIL.__version__}


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable scan cache %s (%s)", path, e)
        return {}
    if not isinstance(data, dict) or data.get("stamp") != _cache_stamp() or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _save_cache(path: Path, root: str, entries: dict[str, Any]) -> None:
    try:
        write_text_atomic(path, json.dumps({"stamp": _cache_stamp(), "root": root, "entries": entries}))
    except OSError as e:  # a cache that cannot be written only costs time on the next run
        log.warning("could not write the scan cache %s (%s); the next scan will decode every file again", path, e)


# ------------------------------------------------------------------------------------------------ scan
def _decode(path: str) -> dict[str, Any]:
    """Decode one file and describe the result (a JSON-able dict; this is what the cache stores)."""
    try:
        _img, info = decode_image(path)
    except BadImageError as e:
        return {"ok": False, "reason": e.reason}
    return {"ok": True, "conversion": info.conversion, "rotated": info.rotated, "size": list(info.size)}


def _decode_safely(path: str) -> dict[str, Any]:
    try:
        return _decode(path)
    except Exception as e:  # never let one file stop the scan
        return {"ok": False, "reason": f"cannot decode ({type(e).__name__}: {e})"}


def _use_tqdm(progress: bool) -> bool:
    if not progress:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def scan(
    samples: Sequence[Sample],
    classes: Sequence[str],
    *,
    workers: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> ScanReport:
    """Decode every file of ``samples`` and report bad files, conversions, rotations, sizes and warnings.

    Files whose extension is not an image extension are reported as bad without being read.  ``workers``
    threads decode in parallel (default: the number of CPUs).  Results are cached in a JSON file under
    ``cache_dir`` (default :func:`default_cache_dir`), one per dataset root; a file whose size or mtime
    changed is decoded again.
    """
    start = time.perf_counter()
    report = ScanReport()
    paths = list(dict.fromkeys(os.fspath(p) for p, _ in samples))
    absolute = {p: os.path.abspath(p) for p in paths}
    report.root = _common_root(sorted(set(absolute.values())))

    cache_path = _cache_file(Path(cache_dir) if cache_dir is not None else default_cache_dir(), report.root)
    entries = _load_cache(cache_path) if paths else {}
    results: dict[str, dict[str, Any]] = {}
    todo: list[tuple[str, int, int]] = []  # (path, size, mtime_ns)
    for p in paths:
        ext = os.path.splitext(p)[1].lower()
        if ext not in IMAGE_EXTENSIONS:
            results[p] = {"ok": False, "reason": f"unsupported extension {ext}" if ext else "no file extension"}
            continue
        try:
            st = os.stat(p)
        except FileNotFoundError:
            results[p] = {"ok": False, "reason": "file not found"}
            continue
        except OSError as e:
            results[p] = {"ok": False, "reason": f"cannot read ({e.strerror or e})"}
            continue
        entry = entries.get(absolute[p])
        if (
            isinstance(entry, dict)
            and entry.get("size") == st.st_size
            and entry.get("mtime_ns") == st.st_mtime_ns
            and isinstance(entry.get("result"), dict)
            and "ok" in entry["result"]
        ):
            results[p] = entry["result"]
            report.cached += 1
        else:
            todo.append((p, st.st_size, st.st_mtime_ns))

    if todo:
        n_workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail here, not pass half-grey
        bar = None
        if _use_tqdm(progress):
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="Scanning images", unit="img", leave=False)
        pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="resnet-tune-scan")
        try:
            futures = {pool.submit(_decode_safely, p): (p, size, mtime) for p, size, mtime in todo}
            for fut in as_completed(futures):
                p, size, mtime = futures[fut]
                result = fut.result()
                results[p] = result
                entries[absolute[p]] = {"size": size, "mtime_ns": mtime, "result": result}
                report.decoded += 1
                if bar is not None:
                    bar.update(1)
        finally:
            # on Ctrl-C: drop the queued files, and keep what was decoded so far for the next scan
            pool.shutdown(wait=True, cancel_futures=True)
            ImageFile.LOAD_TRUNCATED_IMAGES = previous
            if bar is not None:
                bar.close()
            if report.decoded:
                _save_cache(cache_path, report.root, entries)

    good_paths: set[str] = set()
    for p in paths:  # in sample order, so the report is deterministic
        r = results[p]
        if not r["ok"]:
            report.bad[p] = r["reason"]
            continue
        good_paths.add(p)
        report.sizes[p] = (int(r["size"][0]), int(r["size"][1]))
        if r.get("conversion"):
            report.converted[p] = r["conversion"]
        if r.get("rotated"):
            report.rotated.append(p)

    counts = Counter(label for p, label in samples if os.fspath(p) in good_paths)
    report.class_counts = {name: counts.get(i, 0) for i, name in enumerate(classes)}
    report.warnings = _warnings(report)
    report.seconds = time.perf_counter() - start
    return report


def _warnings(report: ScanReport) -> list[str]:
    out: list[str] = []
    counts = report.class_counts
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        out.append(
            f"{len(empty)} class(es) have no usable images ({', '.join(repr(c) for c in empty[:10])}"
            f"{', ...' if len(empty) > 10 else ''}); add images for them or remove their folders."
        )
    single = [c for c, n in counts.items() if n == 1]
    if single:
        out.append(
            f"{len(single)} class(es) have a single image ({', '.join(repr(c) for c in single[:10])}"
            f"{', ...' if len(single) > 10 else ''}); the model cannot learn a class from one example, add more."
        )
    present = {c: n for c, n in counts.items() if n > 0}
    if len(present) >= 2:
        big = max(present, key=lambda c: present[c])
        small = min(present, key=lambda c: present[c])
        ratio = present[big] / present[small]
        if ratio > IMBALANCE_RATIO:
            out.append(
                f"classes are imbalanced: {big!r} has {present[big]} images but {small!r} only {present[small]} "
                f"(ratio {ratio:.1f}:1); consider class weights or balanced sampling, or collect more images."
            )
    tiny = [(p, wh) for p, wh in report.sizes.items() if min(wh) < TINY_SIDE]
    if tiny:
        p, (w, h) = min(tiny, key=lambda t: t[1][0] * t[1][1])
        out.append(
            f"{len(tiny)} image(s) are smaller than {TINY_SIDE} px on a side (smallest: {report._name(p)}, {w}x{h}); "
            "they will be upscaled, check that they are not thumbnails."
        )
    return out
