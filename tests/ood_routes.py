"""Helpers for the tests that read the OOD set's Debian photos: a route that has them, an OOD sources file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from abcd.oodset.photos import PHOTOS
from abcd.oodset.routes import route_problem
from tests.conftest import SHARED_OOD_PHOTOS

SYSTEM = Path("/")


def deb_route() -> Path:
    """A route with every Debian photo as pinned: the mirror beside the repo, else the installed packages.

    Neither: the test is skipped with the reason, or fails when ``CI`` is set (as for the photo mirror).
    """
    problems = {}
    for root in (SHARED_OOD_PHOTOS, SYSTEM):
        problems[root] = route_problem(root, PHOTOS)
        if problems[root] is None:
            return root
    message = "no route to the OOD set's Debian photos: " + "; ".join(f"{r}: {p}" for r, p in problems.items())
    if os.environ.get("CI"):
        pytest.fail(f"$CI is set, so a route is required: {message}", pytrace=False)
    pytest.skip(message)


def routes_file(folder: Path, **routes: Path | str) -> Path:
    """An OOD sources file (data/ood_sources.yaml's format) with these routes, in this order."""
    path = folder / "ood_sources.yaml"
    path.write_text(yaml.safe_dump({"routes": {name: str(root) for name, root in routes.items()}}, sort_keys=False))
    return path
