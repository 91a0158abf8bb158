"""Where photos come from: a URL of a zip/tar archive, a local archive, or a local directory.

Downloads go to a cache directory, streamed into a temporary file that is renamed into place
only once it is complete and its sha256 checks out: a killed or cut download never leaves a
file that a later run takes as complete. Archives are extracted (members checked to stay
inside the target) into a directory named by the archive's sha256, also atomically.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from abcd.core.errors import UserError
from abcd.core.fileio import atomic_dir, atomic_file
from abcd.core.schema import Schema, check, load_file

ENV_USE = "ABCD_DATA"  # overrides prepare.use
CHUNK = 1 << 20
USER_AGENT = "abcd-classifier-prepare/0.1"


class SourceError(UserError, ValueError):
    """A source that cannot be read: unreachable, a wrong checksum, a missing folder."""


class TransientError(Exception):
    """A failure worth retrying: 5xx, 429, a reset or cut connection, a timeout."""


class SourceParams(Schema):
    """One place photos come from: an http(s) URL of a zip/tar archive, a local archive, or a local
    directory. ``folders`` maps each class to folders inside it (relative to its root)."""

    # Part of file names in the download cache: no path separators, not hidden.
    name: Annotated[
        str, Field(pattern=r"^[\w-][\w.-]*$", description="a plain name (letters, digits, - _ .; no leading .)")
    ]
    location: str
    # Of the archive: checked when set; printed on first download when null.
    sha256: Annotated[
        Annotated[str, Field(pattern="^[0-9a-fA-F]{64}$")] | None, Field(description="64 hex digits or null")
    ]
    folders: dict[str, Annotated[list[str], Field(min_length=1, description="a non-empty list of folders")]]
    # Images per class from this source, after validation and de-duplication.
    take: Annotated[Annotated[int, Field(ge=1)] | Literal["all"], Field(description="an integer >= 1 or 'all'")]


def _distinct_names(sources: list[SourceParams]) -> list[SourceParams]:
    check(len({s.name for s in sources}) == len(sources), "sources with distinct names")
    return sources


SourceSet = Annotated[
    list[SourceParams], Field(min_length=1, description="a non-empty list of sources"), AfterValidator(_distinct_names)
]


class SourcesFile(Schema):
    """The sources file (``data/sources.yaml``): data wiring, not a knob, so it is a dependency of
    prepare rather than params (``dvc exp show`` keeps its columns for results and knobs);
    ``prepare.use`` in params.yaml picks one of its named sets."""

    sets: Annotated[dict[str, SourceSet], Field(min_length=1, description="at least one named set of sources")]
    downloads: str  # cache for downloaded and extracted archives, relative to the repo root


def load_sources(path: str | Path) -> SourcesFile:
    """Read and validate the sources file's shape. Which classes a set's folders name is checked only for
    the set prepare reads (:func:`class_mismatch`): the other sets may serve another class list."""
    return load_file(SourcesFile, path, "sources", "a YAML file of named source sets, docs/data.md", SourceError)


def resolve_path(location: str, cwd: Path) -> Path:
    """An absolute path for a location relative to the repo root.

    DVC runs queued and ``--temp`` experiments in a copy of the repo under
    ``<repo>/.dvc/tmp/exps/``, where a path such as ``../shared/...`` would point
    inside ``.dvc``; there it is resolved against the repo the copy was made from.
    """
    path = Path(location).expanduser()
    if path.is_absolute():
        return path
    root = cwd.resolve()
    parts = root.parts
    if ".dvc" in parts:
        i = parts.index(".dvc")
        if parts[i + 1 : i + 3] == ("tmp", "exps"):
            root = Path(*parts[:i])
    return (root / path).resolve()


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def class_mismatch(name: str, sources: Sequence[SourceParams], classes: Sequence[str]) -> str | None:
    """Why set ``name`` cannot serve ``classes`` (a folder keyed by another class, or a class with no
    folder), or None when it can."""
    for i, source in enumerate(sources):
        other = [c for c in source.folders if c not in classes]
        if other:
            return f"'sets.{name}[{i}].folders' must be keyed by classes ({', '.join(classes)}), not {', '.join(other)}"
    covered = {label for s in sources for label in s.folders}
    missing = [c for c in classes if c not in covered]
    if missing:
        return (
            f"sources set '{name}': no source has folders for class(es) {', '.join(missing)}; "
            f"every class of {', '.join(classes)} needs at least one"
        )
    return None


def choose_set(
    use: str, sources: dict[str, list[SourceParams]], classes: Sequence[str], cwd: Path, env: dict[str, str]
) -> tuple[str, str]:
    """The name of the source set to read, and why: ``ABCD_DATA`` beats ``prepare.use``.

    ``auto`` takes the first set that serves ``classes`` and whose local locations all exist (URLs
    count as available): with the defaults, the mirror when ``../shared`` is there, the public archives
    otherwise. A named set must serve ``classes``; a SourceError says which folder does not.
    """
    wanted, why = (env[ENV_USE], f"${ENV_USE}") if env.get(ENV_USE) else (use, "prepare.use")
    if wanted != "auto":
        if wanted not in sources:
            raise SourceError(f"{why} is {wanted!r}; choose one of auto, {', '.join(sources)}")
        mismatch = class_mismatch(wanted, sources[wanted], classes)
        if mismatch:
            raise SourceError(f"sources: {mismatch} (the set chosen by {why}={wanted})")
        return wanted, f"{why}={wanted}"
    skipped = []
    for name, items in sources.items():
        mismatch = class_mismatch(name, items, classes)
        missing = [s.location for s in items if not is_url(s.location) and not resolve_path(s.location, cwd).exists()]
        if mismatch or missing:
            skipped.append(f"{name}: {'keyed by other classes' if mismatch else 'missing ' + ', '.join(missing)}")
            continue
        return name, f"{why}=auto: first set whose local paths exist"
    raise SourceError(
        f"{why}=auto: no set of the sources file serves classes {', '.join(classes)} with every local path present "
        f"({'; '.join(skipped)}); set {ENV_USE} or prepare.use to one of {', '.join(sources)}"
    )


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> str:
    """Stream ``url`` into ``part``; return its sha256. Raise TransientError for retryable failures."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, part.open("wb") as out:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            digest = hashlib.sha256()
            size = 0
            bar = _progress(total, PurePosixPath(urllib.request.urlparse(url).path).name, progress)
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
            if total is not None and size != total:
                raise TransientError(f"connection closed after {size} of {total} bytes")
            return digest.hexdigest()
    except urllib.error.HTTPError as err:
        if err.code >= 500 or err.code in (408, 429):
            raise TransientError(f"HTTP {err.code} {err.reason}") from None
        raise SourceError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (http.client.IncompleteRead, ConnectionError, TimeoutError) as err:
        raise TransientError(f"{type(err).__name__}: {err}") from None
    except urllib.error.URLError as err:
        # DNS failure, refused connection, no route: retried (the network may come back), then reported.
        raise TransientError(f"{err.reason}") from None


def _progress(total: int | None, name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}", disable=not enabled, file=sys.stderr)


def download(
    url: str,
    dest: Path,
    sha256: str | None,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> str:
    """Download ``url`` to ``dest`` atomically; return the archive's sha256.

    An existing ``dest`` is reused (re-checked against ``sha256`` when given). The bytes go
    to a temporary file beside it, renamed to ``dest`` only when complete and, if ``sha256``
    is given, matching; on any failure it is removed. Transient failures are
    retried ``retries`` times, waiting ``backoff * 2**attempt`` seconds.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        got = sha256_file(dest)
        if sha256 is None or got == sha256.lower():
            return got
        # A cached file that no longer matches the pinned checksum (changed upstream or damaged): fetch again.
        print(f"{dest}: sha256 {got} does not match {sha256}; downloading again", file=sys.stderr)
        dest.unlink()
    last = ""
    # Renamed into place only when complete and matching; per process: parallel experiments share the cache.
    with atomic_file(dest, suffix=f".part-{os.getpid()}") as part:
        for attempt in range(retries + 1):
            try:
                got = _fetch_once(url, part, timeout, progress)
            except TransientError as err:
                last = str(err)
                if attempt < retries:
                    wait = backoff * 2**attempt
                    print(f"{url}: {last}; retrying in {wait:g}s ({attempt + 1}/{retries})", file=sys.stderr)
                    time.sleep(wait)
                continue
            if sha256 is not None and got != sha256.lower():
                raise SourceError(
                    f"{url}: sha256 mismatch: expected {sha256.lower()}, got {got}; the file was not kept "
                    "(the archive changed upstream, or the download was corrupted)"
                )
            return got
        raise SourceError(f"{url}: download failed after {retries + 1} attempts ({last}); nothing was kept")


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise SourceError(f"archive member {name!r} would be written outside the extraction folder")
    return path


def extract(archive: Path, dest: Path) -> None:
    """Extract a zip or tar archive (any compression) into ``dest``, atomically."""
    with atomic_dir(dest) as tmp:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _safe_member(info.filename)
                zf.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                # The "data" filter refuses absolute paths, links out of the tree and device files.
                tf.extractall(tmp, filter="data")
        else:
            raise SourceError(f"{archive}: not a zip or tar archive")


@dataclass(frozen=True)
class Opened:
    """A source ready to list: the folder its ``folders`` are relative to, and the archive's sha256."""

    params: SourceParams
    root: Path
    sha256: str | None
    kind: str  # directory | archive | url


def open_source(source: SourceParams, cwd: Path, cache: Path, retries: int = 4, backoff: float = 1.0) -> Opened:
    """Download and/or extract ``source`` as needed; return the folder to read it from."""
    if is_url(source.location):
        name = PurePosixPath(urllib.request.urlparse(source.location).path).name or "archive"
        archive = cache / f"{source.name}-{name}"
        known = source.sha256
        try:
            sha = download(source.location, archive, known, retries=retries, backoff=backoff)
        except SourceError as err:
            raise SourceError(
                f"source '{source.name}': {err}. Offline? Put a local copy of the classes in a directory and "
                f"select a set that reads it ({ENV_USE} or prepare.use; docs/data.md)"
            ) from None
        if known is None:
            print(
                f"prepare: sha256 of {source.location} is {sha}; pin it as the sha256 of source "
                f"'{source.name}' in the sources file (data/sources.yaml) to check later downloads",
                file=sys.stderr,
            )
        kind = "url"
    else:
        path = resolve_path(source.location, cwd)
        if path.is_dir():
            return Opened(source, path, None, "directory")
        if not path.is_file():
            raise SourceError(
                f"source '{source.name}': {path} does not exist; expected a directory, a zip/tar archive or an "
                "http(s) URL"
            )
        archive, sha = path, sha256_file(path)
        if source.sha256 is not None and sha != source.sha256.lower():
            raise SourceError(f"source '{source.name}': {path} has sha256 {sha}, expected {source.sha256.lower()}")
        kind = "archive"
    # Named by content: a changed archive is extracted afresh, an unchanged one once.
    root = cache / f"{source.name}-{sha[:16]}"
    if not root.is_dir():
        extract(archive, root)
    return Opened(source, root, sha, kind)


def list_files(opened: Opened) -> Iterator[tuple[str, str, str, Path]]:
    """Every file under the source's class folders, as (label, key, rel, path), sorted.

    ``key`` is ``<source name>/<folder>/<rel>``: unique, and the same on every machine;
    ``rel`` is the path below the class folder.
    """
    for label, folders in opened.params.folders.items():
        for folder in folders:
            base = opened.root / _safe_member(folder)
            if not base.is_dir():
                present = sorted(p.name for p in opened.root.iterdir())[:20] if opened.root.is_dir() else []
                raise SourceError(
                    f"source '{opened.params.name}': folder {folder!r} for class {label} not found in "
                    f"{opened.params.location} (top level holds: {', '.join(present) or 'nothing'})"
                )
            for path in sorted(p for p in base.rglob("*") if p.is_file()):
                rel = path.relative_to(base).as_posix()
                yield label, f"{opened.params.name}/{PurePosixPath(folder).as_posix()}/{rel}", rel, path


def describe(opened: Sequence[Opened]) -> list[dict]:
    """Plain data about each source for the data report (no machine-specific paths)."""
    return [{"name": o.params.name, "location": o.params.location, "kind": o.kind, "sha256": o.sha256} for o in opened]
