"""Routes to the OOD set's Debian photos: which folder ood_data reads them from, and whether it can.

A route is a folder under which every Debian photo of the catalogue sits at its installed path: the
mirror (a byte-for-byte copy) or ``/`` (the installed packages). The OOD sources file
(data/ood_sources.yaml) names them; ``ood.use`` (or ``$ABCD_OOD``) picks one, ``auto`` the first that
has every file, as ``prepare.use`` picks a set of data/sources.yaml. A route counts only with every file
as pinned (src/abcd/oodset/pins.py): then every route gives the same data/ood, and a machine with other
package versions is told so instead of measuring other photos. Whether the OOD branch runs at all
follows from ``ood.evaluate`` and whether a route exists (:func:`choose_route`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from abcd.core.errors import UserError
from abcd.core.schema import Schema, load_file
from abcd.data.sources import resolve_path, sha256_file
from abcd.oodset.photos import DEB, OodPhoto
from abcd.oodset.pins import DEB_SHA256, DEB_VERSIONS

ENV_USE = "ABCD_OOD"  # overrides ood.use


class OodSourcesFile(Schema):
    """The OOD sources file: each route's folder, relative to the repo root or absolute."""

    routes: Annotated[dict[str, str], Field(min_length=1, description="at least one named route (a folder)")]


def load_ood_sources(path: str | Path) -> OodSourcesFile:
    return load_file(OodSourcesFile, path, "OOD sources", "routes to the OOD photos, docs/data.md")


def installed(root: Path, relpath: str) -> Path:
    """Where the Debian file installed at ``relpath`` (an absolute path) lies under the route ``root``."""
    return root / relpath.lstrip("/")


def route_problem(root: Path, photos: Sequence[OodPhoto]) -> str | None:
    """Why the Debian photos cannot be read under ``root``; None when every file has its pinned bytes."""
    files = [p for p in photos if p.source == DEB]
    missing = [p.relpath for p in files if not installed(root, p.relpath).is_file()]
    if missing:
        return f"{len(missing)} of {len(files)} files missing (first: {missing[0]})"
    for p in files:
        if sha256_file(installed(root, p.relpath)) != DEB_SHA256[p.relpath]:
            return f"{p.relpath} differs from the file of {p.package} {DEB_VERSIONS[p.package]} (another version?)"
    return None


@dataclass(frozen=True)
class RouteChoice:
    """The route read (None: the OOD branch is off), why, and what was found on each route looked at."""

    name: str | None
    root: Path | None
    why: str  # how the route was chosen, or why the branch is off
    routes: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)  # location, problem

    def report(self) -> dict[str, Any]:
        """For the data report: no resolved paths, so it reads the same on every machine."""
        if self.name is None:
            return {"evaluated": False, "reason": self.why, "routes": dict(self.routes)}
        return {"evaluated": True, "route": self.name, "chosen_by": self.why, "routes": dict(self.routes)}


def choose_route(
    evaluate: bool | Literal["auto"],
    use: str,
    sources: OodSourcesFile,
    photos: Sequence[OodPhoto],
    cwd: Path,
    env: Mapping[str, str],
) -> RouteChoice:
    """The route to read (``$ABCD_OOD`` beats ``use``), or why the OOD branch is off.

    Off when ``evaluate`` is false, or ``auto`` and no route looked at has every file; with ``evaluate``
    true, no such route is an error that names what each route lacks.
    """
    if evaluate is False:
        return RouteChoice(None, None, "ood.evaluate is false")
    wanted, why = (env[ENV_USE], f"${ENV_USE}") if env.get(ENV_USE) else (use, "ood.use")
    if wanted != "auto" and wanted not in sources.routes:
        raise UserError(f"{why} is {wanted!r}; choose one of auto, {', '.join(sources.routes)}")
    names = list(sources.routes) if wanted == "auto" else [wanted]
    roots = {n: resolve_path(sources.routes[n], cwd) for n in names}
    problems = {n: route_problem(roots[n], photos) for n in names}
    found = {n: {"location": sources.routes[n], "problem": problems[n]} for n in names}
    usable = [n for n in names if problems[n] is None]
    if usable:
        chosen = f"{why}=auto: the first route with every file" if wanted == "auto" else f"{why}={wanted}"
        return RouteChoice(usable[0], roots[usable[0]], chosen, found)
    detail = "; ".join(f"{n} ({sources.routes[n]}): {problems[n]}" for n in names)
    reason = f"no route to the OOD set's Debian photos ({why}={wanted}): {detail}"
    if evaluate is True:
        raise UserError(
            f"ood.evaluate is true but there is {reason}. Put the mirror where data/ood_sources.yaml says, "
            "install the packages (make system-deps), or set ood.evaluate: auto to run without the OOD set"
        )
    return RouteChoice(None, None, reason, found)
