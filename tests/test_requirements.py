"""The pinned requirement files against pyproject.toml's extras: one pin set, split by job.

requirements/<job>.txt pins the whole closure of the ``job`` extra (tools/pin_requirements.py writes
them). serve's pins are a subset of train's and train's of dev's, at the same versions, so the
service runs what the pipeline and the tests ran; serve holds no torch; the CUDA wheels carry the
Linux marker torch's own metadata gives them. Fast: reads text only.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JOBS = ("serve", "train", "dev")
CUDA = re.compile(r"^(nvidia-|cuda-|triton$)")
LINUX = 'platform_system == "Linux"'


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(job: str) -> dict[str, str]:
    """Package name (normalised) -> the rest of its line: version and marker, without the comment."""
    out = {}
    for line in (REPO / "requirements" / f"{job}.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, rest = line.partition("==")
        assert sep, f"requirements/{job}.txt: {line!r} is not an exact pin (name==version)"
        out[normalise(name)] = " ".join(rest.split())
    return out


def extras() -> dict[str, list[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {"base": project["dependencies"], **project["optional-dependencies"]}


def direct(requirements: list[str]) -> set[str]:
    """The names in a list of requirements, leaving out the project's own extras."""
    names = {normalise(re.match(r"[\w.-]+", r).group()) for r in requirements}
    return names - {"abcd-classifier"}


def test_each_job_has_a_pin_file_and_nothing_else_does() -> None:
    assert set(extras()) == {"base", *JOBS}
    assert sorted(p.stem for p in (REPO / "requirements").glob("*.txt")) == sorted(JOBS)
    assert not (REPO / "requirements.txt").exists(), "one pin set per job, in requirements/"


@pytest.mark.parametrize(("small", "large"), [("serve", "train"), ("train", "dev")])
def test_a_job_pins_a_subset_of_the_next_at_the_same_versions(small: str, large: str) -> None:
    inner, outer = pins(small), pins(large)
    assert not set(inner) - set(outer), f"in {small}.txt, not in {large}.txt: {sorted(set(inner) - set(outer))}"
    differ = {name: (v, outer[name]) for name, v in inner.items() if outer[name] != v}
    assert not differ, f"{small}.txt and {large}.txt pin these differently: {differ}"


@pytest.mark.parametrize("job", JOBS)
def test_a_job_pins_every_direct_dependency_of_its_extra(job: str) -> None:
    wanted = direct(extras()["base"])
    for extra in {"serve": ["serve"], "train": ["serve", "train"], "dev": ["serve", "train", "dev"]}[job]:
        wanted |= direct(extras()[extra])
    missing = wanted - set(pins(job))
    assert not missing, f"pyproject.toml's {job} extra needs {sorted(missing)}: rerun tools/pin_requirements.py"


def test_serve_has_no_torch_nor_the_pipeline_libraries() -> None:
    heavy = {"torch", "torchvision", "timm", "albumentations", "pandas", "scipy", "scikit-learn", "dvc", "onnx"}
    assert not heavy & set(pins("serve"))
    assert not [name for name in pins("serve") if CUDA.match(name)]


@pytest.mark.parametrize("job", ["train", "dev"])
def test_the_cuda_wheels_are_pinned_for_linux_only(job: str) -> None:
    cuda = {name: rest for name, rest in pins(job).items() if CUDA.match(name)}
    assert "triton" in cuda and any(name.startswith("nvidia-") for name in cuda)
    unmarked = [name for name, rest in cuda.items() if not rest.endswith(f"; {LINUX}")]
    assert not unmarked, f"requirements/{job}.txt: no '; {LINUX}' marker on {unmarked}"
    others = [name for name, rest in pins(job).items() if ";" in rest and name not in cuda]
    assert not others, f"requirements/{job}.txt: markers on {others}, which every platform needs"


def test_the_marker_is_the_one_torch_puts_on_them() -> None:
    """Where torch requires the CUDA wheels (every Linux), the pins apply; elsewhere none is installed."""
    from importlib import metadata

    required = [r for r in metadata.requires("torch") or [] if "extra ==" not in r]
    cuda = [r for r in required if CUDA.match(normalise(re.match(r"[\w.-]+", r).group()))]
    assert cuda and all(r.split(";", 1)[1].strip().startswith(LINUX) for r in cuda), cuda
