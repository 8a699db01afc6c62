"""Retry policy shared by the tasks: transient failures (a crash, a lost connection) are retried; an error of
the recipe, the data or the machine's setup is not, as the same input fails the same way again."""

from __future__ import annotations

import errno

from tunery.config import RecipeError
from tunery.data.clean import QuarantineLimitExceeded
from tunery.data.ingest import DataError
from tunery.data.split import LeakageError
from tunery.models import ModelError
from tunery.search.study import SearchError
from tunery.training.launch import TrainingJobFailed, TrainingTimeout
from tunery.training.methods import MethodUnavailable

# Retrying these cannot help: the data or the recipe must change first.
BAD_INPUT = (
    RecipeError,
    DataError,
    QuarantineLimitExceeded,
    LeakageError,
    MethodUnavailable,
    ModelError,
    SearchError,
)
# Nor these: a full disk or a file-size limit does not clear in the seconds before a retry (a training job
# retried on a full disk trains again to its first checkpoint, only to fail the same way).
DISK_ERRNOS = (errno.ENOSPC, errno.EFBIG)
DISK_MESSAGES = ("No space left on device", "File too large")


def failed_on_bad_input(error: TrainingJobFailed) -> bool:
    """Whether a training job died of one of :data:`BAD_INPUT`, as its log tail shows.

    The job is another process: its exception reaches the task only as the last lines of its log. An
    uncaught exception there ends with Python's ``<module>.<Class>: <message>`` line, e.g.
    ``tunery.models.ModelError: model folder not found: ...``; the fully qualified name of one of our own
    bad-input errors does not occur in a log otherwise. A timeout is never bad input (a retry resumes).
    """
    if isinstance(error, TrainingTimeout):
        return False
    names = [f"{kind.__module__}.{kind.__qualname__}: " for kind in BAD_INPUT]
    return any(name in line for line in str(error).splitlines() for name in names)


def out_of_disk(error: BaseException) -> bool:
    """Whether the error is a full disk or a file-size limit, here or in a training job's log tail."""
    if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
        return True
    return isinstance(error, TrainingJobFailed) and any(m in str(error) for m in DISK_MESSAGES)


def is_retryable(error: BaseException) -> bool:
    """False for errors caused by the data, the recipe or the setup (also inside a training job), and for
    a full disk."""
    if isinstance(error, BAD_INPUT) or out_of_disk(error):
        return False
    return not (isinstance(error, TrainingJobFailed) and failed_on_bad_input(error))


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Prefect retry condition: False for errors caused by the data or recipe, True otherwise."""
    try:
        state.result()
    except Exception as error:
        return is_retryable(error)
    return True
