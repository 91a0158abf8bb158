"""One registry type: the same message everywhere, and every registry-backed param checked at load."""

from __future__ import annotations

import copy
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from abcd.core import params as params_module
from abcd.core.registry import BACKBONES, OPTIMIZERS, ChoiceError, Registry
from abcd.core.schema import ParamsError
from tests.conftest import REPO

DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())


def registry_fields() -> list[tuple[str, Registry]]:
    """Every params field typed ``Annotated[str, <Registry>]``, as its dotted key."""
    found = []

    def walk(cls: type, prefix: str) -> None:
        for name, tp in typing.get_type_hints(cls, include_extras=True).items():
            key = f"{prefix}{name}"
            if typing.get_origin(tp) is typing.Annotated:
                found.extend((key, r) for r in typing.get_args(tp)[1:] if isinstance(r, Registry))
            elif isinstance(tp, type) and issubclass(tp, BaseModel):
                walk(tp, key + ".")

    walk(params_module.Params, "")
    return found


def test_the_registry_backed_fields_are_the_ones_named_in_params_yaml() -> None:
    keys = {k for k, _ in registry_fields()}
    assert keys == {
        "model.backbone",
        "train.optimizer",
        "train.scheduler",
        "train.class_weights",
        "train.init",
        "unknown.method",
    }


@pytest.mark.parametrize(("key", "registry"), registry_fields(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_bad_choice_fails_at_load_with_the_choices_and_the_closest(key: str, registry: Registry) -> None:
    data = copy.deepcopy(DEFAULTS)
    section, field = key.split(".")
    good = data[section][field]
    data[section][field] = good + "x"  # one letter off: the message suggests the real name
    with pytest.raises(ParamsError) as err:
        params_module.parse_params(data)
    msg = str(err.value)
    assert f"params: '{key}': unknown {registry.kind} '{good}x'; choose one of {', '.join(registry)}" in msg
    assert f"(did you mean '{good}'?)" in msg


def test_registry_get_imports_the_implementation_lazily_and_checks_names() -> None:
    import abcd.training.optim

    assert OPTIMIZERS.get("adamw") is abcd.training.optim.adamw
    assert BACKBONES.target("resnet18") == "abcd.models.backbones:resnet18"
    with pytest.raises(ChoiceError, match=r"^unknown optimizer 'lion'; choose one of sgd, adam, adamw$"):
        OPTIMIZERS.get("lion")
    # A choice error is a user error and a ValueError, like every params error.
    assert issubclass(ChoiceError, ValueError)


def test_load_params_names_the_file(tmp_path: Path) -> None:
    data = copy.deepcopy(DEFAULTS)
    data["model"]["backbone"] = "efficientnet_lite3"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError, match=rf"did you mean 'efficientnet_lite2'\?\) \(in {path}\)"):
        params_module.load_params(path)
