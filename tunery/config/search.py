"""The recipe's ``search`` section: a hyperparameter search over recipe fields (:mod:`tunery.search`)."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from tunery.config.base import Section

# The validation metrics a trial is judged by: what the training job's evaluation reports (eval_<name>).
SEARCH_METRICS = ("loss", "accuracy", "macro_f1")
# Keys a search may not vary: they name the job or where it keeps its files, not how the model is trained.
# split and cleaning too: every trial trains on the search run's split, made once before the trials.
FIXED_KEYS = (
    "name",
    "workdir",
    "data",
    "mlflow",
    "search",
    "continuous",
    "cost",
    "evaluation",
    "split",
    "cleaning",
)


class ParameterSpace(Section):
    """One dimension of the search: a float or int range, or a list of choices."""

    type: Literal["float", "int", "choice"] = Field(description="float, int (a range) or choice (a list).")
    low: float | None = Field(None, description="Smallest value of a float or int range.")
    high: float | None = Field(None, description="Largest value of a float or int range (included).")
    log: bool = Field(False, description="Sample the range on a log scale (learning rates).")
    step: float | None = Field(
        None, gt=0, description="Spacing of the values of a range (the grid sampler needs it for floats)."
    )
    choices: list[Any] | None = Field(
        None, description="The values of a choice (numbers, strings, booleans)."
    )

    @model_validator(mode="after")
    def _shape(self) -> ParameterSpace:
        if self.type == "choice":
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("a choice needs `choices` (a non-empty list) and no low/high")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"`choices` lists a value twice: {self.choices}")
            if any(not isinstance(c, str | int | float | bool) and c is not None for c in self.choices):
                raise ValueError("`choices` may hold numbers, strings, booleans or null only")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} range takes low/high, not `choices`")
        if self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"a {self.type} range needs low <= high, got low={self.low} high={self.high}")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log range needs low > 0 and no step")
        if self.type == "int":
            if self.low != int(self.low) or self.high != int(self.high):
                raise ValueError("an int range needs whole low and high")
            if self.step is not None and self.step != int(self.step):
                raise ValueError("an int range needs a whole step")
        return self

    def grid(self) -> list[Any] | None:
        """Every value of this dimension, for the grid sampler; None where the range is continuous."""
        if self.type == "choice":
            return list(self.choices)
        if self.type == "float" and self.step is None:
            return None
        if self.log:  # an int log range: every whole value (a step would not be even on a log scale)
            return list(range(int(self.low), int(self.high) + 1))
        step = self.step or 1
        count = math.floor((self.high - self.low) / step + 1e-9) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.type == "int" else [round(v, 12) for v in values]


class PrunerConfig(Section):
    """Early stopping of bad trials from their per-evaluation validation metric."""

    name: Literal["none", "median", "hyperband"] = Field(
        "median",
        description="median: stop a trial whose best value so far is worse than the median of earlier trials "
        "at the same evaluation; hyperband: successive halving over evaluations; none: every trial runs out.",
    )
    startup_trials: int = Field(
        3, ge=0, description="Trials that always run out before the median pruner may stop one."
    )
    warmup_evaluations: int = Field(
        0, ge=0, description="Evaluations of a trial before it may be stopped (median pruner)."
    )


class SearchConfig(Section):
    """A hyperparameter search: trials of the normal training job over a space of recipe fields, in an
    Optuna study kept in a database so that a crashed or re-run search resumes it."""

    space: dict[str, ParameterSpace] = Field(
        description="Dotted recipe field -> its values, e.g. `training.learning_rate: {type: float, low: "
        "1.0e-5, high: 1.0e-3, log: true}`."
    )
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe", description="tpe (Bayesian, Optuna's TPE), random, or grid (every combination once)."
    )
    trials: int = Field(
        20, ge=1, le=10_000, description="Trials that finish (complete or pruned) before the search ends."
    )
    timeout_minutes: float | None = Field(
        None, gt=0, description="Start no new trial after this many minutes of this search run (null: none)."
    )
    metric: Literal["loss", "accuracy", "macro_f1"] | None = Field(
        None,
        description="Validation metric that ranks trials (null: the gate's primary metric where training "
        "reports it, else loss). loss is minimised, the others maximised.",
    )
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    parallel: int = Field(
        1, ge=1, le=64, description="Trials started at once (each holds a training slot while it trains)."
    )
    seed: int = Field(0, description="Seed of the sampler.")
    storage: str | None = Field(
        None,
        description="Optuna RDB storage URL (e.g. postgresql+psycopg://host/db; null: TUNERY_SEARCH_STORAGE, "
        "else sqlite:///<workdir>/search/optuna.db). A password belongs in PGPASSWORD, not here.",
    )
    study: str | None = Field(
        None, description="Study name: a run with the same name resumes it (null: the recipe's name)."
    )
    heartbeat_seconds: int = Field(
        30, ge=1, description="A running trial records that it is alive this often."
    )
    grace_seconds: int = Field(
        120, ge=2, description="A trial silent this long is taken as crashed and is run again."
    )

    @model_validator(mode="after")
    def _space(self) -> SearchConfig:
        if not self.space:
            raise ValueError("`search.space` needs at least one field")
        for key in self.space:
            if key.split(".")[0] in FIXED_KEYS:
                raise ValueError(f"`search.space.{key}`: a search cannot vary `{key.split('.')[0]}`")
        if self.sampler == "grid":
            continuous = [key for key, dim in self.space.items() if dim.grid() is None]
            if continuous:
                raise ValueError(
                    f"the grid sampler needs countable values: give {', '.join(continuous)} a `step` or "
                    "`choices`"
                )
        if self.grace_seconds <= self.heartbeat_seconds:
            raise ValueError("`search.grace_seconds` must be longer than `search.heartbeat_seconds`")
        return self

    def grid_size(self) -> int | None:
        """How many combinations the grid sampler has (None for other samplers)."""
        if self.sampler != "grid":
            return None
        return math.prod(len(dim.grid()) for dim in self.space.values())

    def metric_for(self, task: str, gate_metric: str) -> str:
        """The validation metric trials are ranked by."""
        if self.metric:
            return self.metric
        return gate_metric if task == "classification" and gate_metric in SEARCH_METRICS else "loss"


def with_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of a raw recipe mapping with dotted ``field -> value`` set (a trial's parameters)."""
    result = json.loads(json.dumps(raw))
    for key, value in values.items():
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:  # an optional section left out (e.g. method.lora.* while lora is default)
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"`{key}`: `{part}` is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def _extremes(dim: ParameterSpace) -> list[Any]:
    if dim.type == "choice":
        return list(dim.choices)
    cast = int if dim.type == "int" else float
    return [cast(dim.low), cast(dim.high)]


def check_space(recipe_type: type, recipe: Any) -> None:
    """Fail fast on a search space that names no recipe field, or holds a value the field refuses: each
    dimension's bounds (or every choice) are set on the recipe, one at a time, and validated."""
    if recipe.search.parallel > 1 and recipe.distributed.master_port:
        raise ValueError(
            "`search.parallel` > 1 needs `distributed.master_port: null` (each trial's job takes a free port)"
        )
    base = recipe.model_dump(mode="json")
    base["search"] = None
    for key, dim in recipe.search.space.items():
        for value in _extremes(dim):
            try:
                recipe_type.model_validate(with_values(base, {key: value}))
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or key
                message = "no such recipe field" if first["type"] == "extra_forbidden" else first["msg"]
                raise ValueError(f"`search.space.{key}` value {value!r}: {where}: {message}") from None
            except ValueError as err:
                raise ValueError(f"`search.space.{key}` value {value!r}: {err}") from None
