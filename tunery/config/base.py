"""The base of every recipe section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A recipe section: unknown keys fail (a typo is never ignored), values are checked on assignment."""

    # allow_inf_nan: `training.epochs: .inf` or `.nan` is a typo or a mistake, never a setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class RecipeError(ValueError):
    """A recipe that cannot be used; the message is meant for the user, as is."""
