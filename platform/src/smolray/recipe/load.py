"""Load a recipe from YAML, apply `--set a.b=value` overrides, validate.

Errors come back as one `RecipeError` whose message lists every problem as
`field: value: what is wrong and how to fix it`, so a user fixes a recipe
in one edit instead of one error per run.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from smolray.recipe.schema import Recipe

R = TypeVar("R", bound=BaseModel)


class RecipeError(ValueError):
    """A recipe that cannot run, with a message meant for the user."""


def load_recipe(path: str | Path, overrides: list[str] | None = None, cls: type[R] = Recipe) -> R:
    """A validated recipe of type `cls` (Recipe for pretraining, SFTRecipe, DPORecipe)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"--config {path}: no such file; pass a recipe such as recipes/tiny.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"--config {path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"--config {path}: the top level must be a mapping of sections")
    return recipe_from_dict(apply_overrides(raw, overrides or []), source=str(path), cls=cls)


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe", cls: type[R] = Recipe) -> R:
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        lines = [_describe(err, raw, cls) for err in e.errors()]
        raise RecipeError(f"{source} is not a valid recipe:\n" + "\n".join(lines)) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b.c=value`, where value is parsed as YAML (so 3, 1e-3, true, [1, 2]).

    A list element is addressed by index or, for lists of named items such as
    data.sources, by name: `data.sources.code.shards=/data/code`.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.zero_stage=3")
        value = yaml.safe_load(text) if text != "" else ""
        parts = key.split(".")
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                idx = _list_index(node, part, where, item)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise RecipeError(
                    f"--set {item!r}: {'.'.join(parts[:i])} is a value, not a section"
                )
    return out


def _list_index(node: list, part: str, where: str, item: str) -> int:
    if part.isdigit() and int(part) < len(node):
        return int(part)
    for idx, elem in enumerate(node):
        if isinstance(elem, dict) and elem.get("name") == part:
            return idx
    names = [e.get("name") for e in node if isinstance(e, dict) and "name" in e]
    raise RecipeError(
        f"--set {item!r}: {where} matches no element; use an index below {len(node)}"
        + (f" or one of the names {names}" if names else "")
    )


def _describe(err: dict[str, Any], raw: dict[str, Any], cls: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    kind, msg = err["type"], err["msg"]
    if kind == "value_error":
        # Our own validators already name field, value and fix.
        return "  - " + msg.removeprefix("Value error, ")
    if kind == "extra_forbidden":
        parent = ".".join(str(p) for p in err["loc"][:-1]) or "the top level"
        known = _known_fields(err["loc"][:-1], cls)
        return (
            f"  - {loc}: unknown key (typo?); {parent} accepts "
            f"{', '.join(known) if known else 'no extra keys'}"
        )
    if kind == "missing":
        return f"  - {loc}: required but missing; add it to the recipe"
    value = _lookup(raw, err["loc"])
    if loc == "objective":
        return (f"  - objective={value!r}: this job takes {msg.split()[-1]} recipes; run a "
                f"{value!r} recipe with its own job (jobs/{value}.py)")
    return f"  - {loc}={value!r}: {msg}"


def _lookup(raw: Any, loc: tuple) -> Any:
    node = raw
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _known_fields(loc: tuple, cls: type[BaseModel]) -> list[str]:
    model: Any = cls
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        # list[SourceConfig] and the like: descend into the element type.
        args = getattr(ann, "__args__", None)
        model = args[0] if args else ann
        if not hasattr(model, "model_fields"):
            return []
    return sorted(model.model_fields)
