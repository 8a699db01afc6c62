"""Training on a tiny BERT built from a config (fast on 2 cores): each method learns and exports."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tunery.config import Recipe
from tunery.inference import TextClassifier
from tunery.layout import RunLayout
from tunery.training import train

POSITIVE = ["great", "wonderful", "excellent", "lovely", "superb", "happy"]
NEGATIVE = ["awful", "terrible", "horrible", "dreadful", "poor", "sad"]


class ListLogger:
    def __init__(self) -> None:
        self.records: list[tuple[int | None, dict]] = []

    def log_metrics(self, metrics, step=None):
        self.records.append((step, dict(metrics)))


def recipe_for(tiny_bert, method: str, tmp_path, **training) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "tiny",
            "data": {"source": "unused.csv"},
            "model": {"base": str(tiny_bert), "max_length": 16},
            "method": {"name": method, "lora": {"r": 4, "alpha": 8}},
            "training": {
                "epochs": 1,
                "max_steps": 30,
                "batch_size": 8,
                "learning_rate": 3e-3,
                "warmup_ratio": 0.0,
                "logging_steps": 5,
                **training,
            },
            "mlflow": {"registered_model": "tiny"},
            "workdir": str(tmp_path),
        }
    )


def sentiment_frame(n: int, offset: int = 0) -> pd.DataFrame:
    rows = []
    for i in range(offset, offset + n):
        pos = i % 2 == 0
        word = (POSITIVE if pos else NEGATIVE)[i % 6]
        rows.append({"text": f"the film was {word} number {i}", "label": "pos" if pos else "neg"})
    return pd.DataFrame(rows)


def write_splits(tmp_path) -> RunLayout:
    layout = RunLayout(tmp_path / "run")
    for name, (n, offset) in {"train": (120, 0), "validation": (24, 500), "test": (24, 900)}.items():
        layout.split(name).parent.mkdir(parents=True, exist_ok=True)
        sentiment_frame(n, offset).to_parquet(layout.split(name))
    return layout


@pytest.mark.parametrize("method", ["full", "lora", "ia3", "prompt_tuning"])
def test_method_learns_and_exports_a_plain_model(tiny_bert, tmp_path, method):
    layout = write_splits(tmp_path)
    logger = ListLogger()
    # IA3 only rescales activations: at the shared 3e-3 it moves the loss by ~0.001 in 30 steps (noise
    # decided the sign), so it gets the larger step size IA3 is usually trained with.
    overrides = {"learning_rate": 3e-2} if method == "ia3" else {}
    model_dir = train(recipe_for(tiny_bert, method, tmp_path, **overrides), layout, logger)

    losses = [m["train/loss"] for _, m in logger.records if "train/loss" in m]
    assert len(losses) >= 3 and losses[-1] < losses[0], f"loss did not go down: {losses}"
    summary = json.loads((layout.train_dir / "metrics.json").read_text())
    assert summary["global_steps"] == 30
    expected_format = {"full": "full", "lora": "merged", "ia3": "merged", "prompt_tuning": "adapter"}[method]
    assert summary["export"]["format"] == expected_format
    if expected_format == "merged":
        assert summary["export"]["max_abs_diff"] < 1e-4
        assert not (model_dir / "adapter_config.json").exists(), "adapters must be merged into a plain model"
    classifier = TextClassifier(model_dir)
    assert classifier.labels == ["neg", "pos"]
    predictions = classifier.predict(["the film was great number 1", "the film was awful number 3"])
    assert set(predictions) <= {"neg", "pos"}
