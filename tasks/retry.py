"""Retry policy shared by the tasks: transient failures are retried, bad input is not."""

from __future__ import annotations

from tunery.config import RecipeError
from tunery.data.clean import QuarantineLimitExceeded
from tunery.data.ingest import DataError
from tunery.data.split import LeakageError
from tunery.training.methods import MethodUnavailable

# Retrying these cannot help: the data or the recipe must change first.
BAD_INPUT = (RecipeError, DataError, QuarantineLimitExceeded, LeakageError, MethodUnavailable)


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Prefect retry condition: False for errors caused by the data or recipe, True otherwise."""
    try:
        state.result()
    except BAD_INPUT:
        return False
    except Exception:
        return True
    return True
