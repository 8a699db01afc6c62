"""Shared fixtures. Environment is fixed before Prefect, MLflow or transformers are imported."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_STATE = Path(tempfile.mkdtemp(prefix="tunery-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may reach a model hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("PREFECT_HOME", str(_STATE / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# DeepSpeed compiles its CPU ops once (~1 min); keep them in the project cache across runs
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".tunery" / "torch_extensions")
)
os.environ.pop("PREFECT_API_URL", None)
# Under pytest-xdist the workers share the cores: each worker's torch (evaluation in the test process, through
# OMP_NUM_THREADS, and the training jobs it launches, through tunery's TUNERY_MAX_CPU_THREADS cap) gets its
# share, so that two workers' OpenMP threads do not spin against each other on more threads than cores.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    from tunery.ops.cpus import usable_cpus  # a CI container's CPU quota, not the host's CPU count

    _share = max(1, usable_cpus() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = os.environ["TUNERY_MAX_CPU_THREADS"] = str(_share)
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


# MLflow state that one test may leave behind for the next: a recipe's tracking URI with credentials moves
# them into the environment (config.credentials_to_environment), and mlflow.set_tracking_uri() writes
# MLFLOW_TRACKING_URI for subprocesses (a fixture restoring "the URI before" sets the default one). A later
# test's subprocess would then log to another test's store. After every test the session's baseline is
# back: no MLflow URI or credentials set (popped above), PREFECT_API_URL as it was before the test.
_MLFLOW_ENVIRONMENT = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
for _name in _MLFLOW_ENVIRONMENT:
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def _restore_process_environment():
    import sys

    prefect_api = os.environ.get("PREFECT_API_URL")
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)  # also unsets MLFLOW_TRACKING_URI
    for name in _MLFLOW_ENVIRONMENT:
        os.environ.pop(name, None)
    if prefect_api is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = prefect_api


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: real data sets. Missing data fails (never skips) so CI cannot pass without it."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real-data tests need {SHARED_DATA} (see README: tests read ../shared/data)")
    return SHARED_DATA


def read_sms_spam(data_root: Path):
    """All 5,574 rows of sms_spam (columns Label, SMS). QUOTE_NONE: some messages hold a lone '"' that a
    quoting reader would take as the start of a field spanning the next rows."""
    import csv

    import pandas as pd

    return pd.read_csv(
        data_root / "sms_spam" / "SMSSpamCollection",
        sep="\t",
        dtype=str,
        keep_default_na=False,
        quoting=csv.QUOTE_NONE,
    )


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny randomly initialised BERT (2 layers, hidden 32) with the MiniLM tokenizer, saved locally.

    Seeded: the same weights whichever test asks first (tests that plant errors in it depend on them)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tunery.models import resolve_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def prefect_harness():
    """One real (temporary) Prefect API server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (chat template, pad token) from the converted folder.

    The first use converts the packaged GGUF into the tunery cache (~35 s); later sessions reuse it.
    Treat it as read-only: it is shared by the whole session.
    """
    from transformers import AutoTokenizer

    from tunery.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A tiny randomly initialised Llama (2 layers, hidden 32) with the SmolLM2 tokenizer, saved locally."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = smollm2_tokenizer
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 with a SQLite backend store; stopped by its PID at the end."""
    from tunery.ops import stack

    service = stack.start_mlflow(tmp_path_factory.mktemp("mlflow-server"))
    yield service.url
    stack.stop_services([service])


@pytest.fixture(scope="module")
def postgres_mlflow_server():
    """PostgreSQL (Debian's server binaries) and an ``mlflow server`` using it as the backend store.

    Both are real processes on 127.0.0.1, stopped by their PIDs (MLflow first). The folder is made
    outside pytest's root-only temporary tree: PostgreSQL runs as the ``postgres`` user when we are root.
    """
    import shutil
    import tempfile

    from tunery.ops import stack

    root = Path(tempfile.mkdtemp(prefix="tunery-pg-lane-"))
    root.chmod(0o755)
    started = []
    try:
        postgres, uri = stack.start_postgres(root)
        started.append(postgres)
        server = stack.start_mlflow(root, backend_uri=uri)
        started.append(server)
        yield {"url": server.url, "backend_uri": uri}
    finally:
        stack.stop_services(started)
        shutil.rmtree(root, ignore_errors=True)


def flow_run_messages(flow_run_id) -> list[str]:
    """Every log message Prefect stored for a flow run, in time order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs, page = [], None
    with get_client(sync_client=True) as client:
        while page is None or len(page) == 200:  # the API returns at most 200 logs per call
            page = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200,
                offset=len(logs),
            )
            logs += page
    return [log.message for log in sorted(logs, key=lambda log: log.timestamp)]


def pytest_collection_modifyitems(config, items):
    """The longest modules first (``tests/module_seconds.json``: measured seconds per slow module), the rest
    in their usual order. With two xdist workers (``make test TEST_WORKERS=2``: ``--dist loadfile
    --no-loadscope-reorder`` hands whole modules out in this order) the long ones start early and the many
    short ones fill the gaps, instead of one long module running alone at the end. One process runs them
    in this order too."""
    import json

    seconds = json.loads((REPO / "tests" / "module_seconds.json").read_text(encoding="utf-8"))
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::", 1)[0], 0))  # stable within a module
