"""Dotted ``key=value`` overrides of a raw recipe mapping (the command line's and the search trials')."""

from __future__ import annotations

import json
from typing import Annotated, Any

import yaml

from tunery.config.base import RecipeError

Override = Annotated[str, "dotted.key=value"]


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a raw recipe mapping (values parsed as YAML scalars/lists).

    Args:
        raw: the mapping loaded from YAML; it is not modified.
        overrides: strings of the form ``dotted.key=value``.

    Returns:
        A new mapping with the overrides applied.
    """
    result = json.loads(json.dumps(raw))  # deep copy of plain YAML data
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override {item!r} is not of the form dotted.key=value")
        parts = key.strip().split(".")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise RecipeError(f"override {item!r}: `{where}` is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
    return result
