"""docs/data.md's "your own photos" example, run exactly as written: renamed classes in a set of one's own."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, require_shared_photos
from tests.pipeline_utils import copy_project, run

pytestmark = pytest.mark.slow

PER_CLASS = 6
# The example's classes, filled from the shared photos of these classes.
FROM = {"fourmis": "ants", "abeilles": "bees", "chats": "cats"}


def example() -> tuple[str, str]:
    """The YAML set and the command of the example, as the page shows them."""
    text = (REPO / "docs" / "data.md").read_text()
    section = text[text.index("Your own photos") :]
    snippet = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip()
    return snippet, command


def test_the_example_trains_a_model_on_renamed_classes(reproduced, tmp_path: Path) -> None:
    snippet, command = example()
    repo = copy_project(reproduced[0], tmp_path / "repo")
    env = reproduced[1]
    photos = require_shared_photos()
    for new, old in FROM.items():
        (repo / "data" / "photos" / new).mkdir(parents=True)
        for f in sorted((photos / old).iterdir())[:PER_CLASS]:
            shutil.copyfile(f, repo / "data" / "photos" / new / f.name)
    # The set goes under `sets:`, as the snippet says; the shipped sets stay keyed by ants..dogs.
    sources = repo / "data" / "sources.yaml"
    text = sources.read_text()
    shipped = set(yaml.safe_load(text)["sets"])  # keyed by ants..dogs, left as they are
    sources.write_text(text.replace("sets:\n", "sets:\n" + snippet, 1))
    assert set(yaml.safe_load(sources.read_text())["sets"]) == {*shipped, "mine"}

    run(shlex.split(command), repo, env)

    data = json.loads((repo / "reports" / "data.json").read_text())
    assert data["source_set"] == "mine"
    report = json.loads((repo / "reports" / "test.json").read_text())
    assert list(report["test"]["per_class"]) == list(FROM)
    metrics = json.loads((repo / "metrics" / "test.json").read_text())
    assert 0.0 <= metrics["test"]["f1_macro"] <= 1.0
    assert (repo / "models" / "model.pt").is_file() and (repo / "models" / "model.onnx").is_file()
