"""Training: each method learns a small sentiment task on the packaged MiniLM and exports a usable model."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tunery.config import Recipe
from tunery.layout import RunLayout
from tunery.serving.inference import TextClassifier
from tunery.training.loop import train

POSITIVE = ["great", "wonderful", "excellent", "lovely", "superb", "happy"]
NEGATIVE = ["awful", "terrible", "horrible", "dreadful", "poor", "sad"]


class ListLogger:
    def __init__(self) -> None:
        self.records: list[tuple[int | None, dict]] = []

    def log_metrics(self, metrics, step=None):
        self.records.append((step, dict(metrics)))


def recipe_for(base, method: str, tmp_path, **training) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "tiny",
            "data": {"source": "unused.csv"},
            "model": {"base": str(base), "max_length": 16},
            "method": {"name": method, "lora": {"r": 4, "alpha": 8}},
            "training": {
                "epochs": 1,
                "max_steps": 30,
                "batch_size": 8,
                "learning_rate": 3e-3,
                "warmup_ratio": 0.0,
                "logging_steps": 5,
                # pinned, not the recipe default: the per-method learning rates below were calibrated
                # on these batches (prompt tuning did not learn in 60 steps on random ones at 3e-2)
                "group_by_length": True,
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


# Learning rate per method, on the packaged MiniLM: every method learns this task clearly in 60 steps there
# (a few seconds each), while on the tiny random BERT IA3 and prompt tuning cannot (they only rescale or
# prepend to features that mean nothing) and full/LoRA learn or not depending on the random init.
LEARNING_RATES = {"full": 1e-4, "lora": 3e-3, "ia3": 3e-2, "prompt_tuning": 3e-2}


@pytest.mark.slow  # 60 steps of the packaged MiniLM per method: the integration lane (make test)
@pytest.mark.parametrize("method", list(LEARNING_RATES))
def test_method_learns_and_exports_a_plain_model(tmp_path, method):
    from tunery.models import resolve_model

    layout = write_splits(tmp_path)
    logger = ListLogger()
    recipe = recipe_for(
        resolve_model("minilm"), method, tmp_path, learning_rate=LEARNING_RATES[method], max_steps=60
    )
    model_dir = train(recipe, layout, logger)

    # learning, not noise: the last two logged losses average under half of the first two, and the model
    # separates the held-out sentences
    losses = [m["train/loss"] for _, m in logger.records if "train/loss" in m]
    assert len(losses) == 12, losses
    assert sum(losses[-2:]) < 0.5 * sum(losses[:2]), f"loss did not clearly go down: {losses}"
    summary = json.loads((layout.train_dir / "metrics.json").read_text())
    assert summary["global_steps"] == 60
    assert summary["validation"]["accuracy"] >= 0.9, summary["validation"]
    expected_format = {"full": "full", "lora": "merged", "ia3": "merged", "prompt_tuning": "adapter"}[method]
    assert summary["export"]["format"] == expected_format
    if expected_format == "merged":
        assert summary["export"]["max_abs_diff"] < 1e-4
        assert not (model_dir / "adapter_config.json").exists(), "adapters must be merged into a plain model"
    classifier = TextClassifier(model_dir)
    assert classifier.labels == ["neg", "pos"]
    predictions = classifier.predict(["the film was great number 1", "the film was awful number 3"])
    assert list(predictions) == ["pos", "neg"]


def test_random_batches_without_dropout_train_exactly_like_a_plain_trainer(tmp_path, tiny_bert):
    """tunery's loop adds no hidden change to the optimisation: with its random sampler and dropout off, it
    takes the same steps as a plain HF Trainer script that pads to max_length (the training benchmark's
    baseline), so any accuracy gap between the two comes from dropout's random masks, not from tunery.

    Same seed -> same classifier head and batch order; padding positions are masked out of attention, so
    dynamic padding changes the arithmetic only by float rounding. Compared: every step's loss and the
    validation logits after 20 steps.
    """
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    layout = write_splits(tmp_path)
    settings = {"max_steps": 20, "learning_rate": 1e-3, "warmup_ratio": 0.1, "weight_decay": 0.01, "seed": 7}
    recipe = recipe_for(
        tiny_bert, "full", tmp_path, group_by_length=False, dropout=0.0, logging_steps=1, **settings
    )
    logger = ListLogger()
    model_dir = train(recipe, layout, logger)
    mine = [m["train/loss"] for _, m in logger.records if "train/loss" in m]

    # the reference, written like run_glue.py: pad to max_length, default collator, random sampler
    set_seed(7)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
    )
    label_ids = {"neg": 0, "pos": 1}  # tunery orders labels alphabetically

    def encoded(frame: pd.DataFrame) -> Dataset:
        data = tokenizer(list(frame["text"]), padding="max_length", max_length=16, truncation=True)
        return Dataset.from_dict({**data, "label": [label_ids[x] for x in frame["label"]]})

    args = TrainingArguments(
        output_dir=str(tmp_path / "reference"),
        max_steps=20,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        warmup_steps=0.1,
        weight_decay=0.01,
        seed=7,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    reference = Trainer(
        model=model,
        args=args,
        train_dataset=encoded(pd.read_parquet(layout.split("train"))),
        data_collator=default_data_collator,
    )
    reference.train()
    theirs = [r["loss"] for r in reference.state.log_history if "loss" in r]

    assert len(mine) == len(theirs) == 20
    assert max(abs(a - b) for a, b in zip(mine, theirs, strict=True)) < 1e-4, (mine, theirs)
    assert mine[0] != pytest.approx(mine[-1], abs=1e-3)  # it trained: the comparison is not of constants

    validation = pd.read_parquet(layout.split("validation"))
    batch = tokenizer(list(validation["text"]), padding=True, return_tensors="pt")
    exported = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    reference.model.eval()
    with torch.no_grad():
        ours, ref = exported(**batch).logits.numpy(), reference.model(**batch).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_a_retry_from_the_last_checkpoint_of_the_budget_trains_no_extra_step(tmp_path, tiny_bert, capfd):
    """An attempt that trained to the end and failed afterwards (in the export, say) leaves a checkpoint at
    the budget; resuming from it used to take one more step ("step 7/6"). Now the checkpoint is exported as
    it is: the same validation loss, the same step count."""
    layout = write_splits(tmp_path)
    recipe = recipe_for(tiny_bert, "full", tmp_path, max_steps=6, save_steps=3, logging_steps=2)
    train(recipe, layout)
    first = json.loads((layout.train_dir / "metrics.json").read_text())
    capfd.readouterr()

    train(recipe, layout, resume_from=str(layout.checkpoints / "checkpoint-6"))
    log = capfd.readouterr().out
    resumed = json.loads((layout.train_dir / "metrics.json").read_text())
    assert "checkpoint-6 holds all 6 steps of the budget" in log
    assert "step 7/6" not in log
    assert resumed["global_steps"] == 6 and resumed["resumed_from"].endswith("checkpoint-6")
    assert resumed["validation"]["loss"] == pytest.approx(first["validation"]["loss"], abs=1e-6)


@pytest.mark.slow  # 60 steps of the packaged MiniLM
def test_bf16_on_a_cpu_with_native_bfloat16_trains_under_autocast_and_exports_fp32_weights(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, TrainerCallback

    from tunery.models import resolve_model
    from tunery.training import methods

    if torch.cuda.is_available() or not methods.cpu_has_native_bf16():
        pytest.skip("the CPU autocast path: needs a CPU with AVX512-BF16 or AMX and no GPU")

    class OutputDtypes(TrainerCallback):
        """The dtype of every Linear output of the training forward passes."""

        def __init__(self) -> None:
            self.seen: set = set()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    module.register_forward_hook(
                        lambda m, i, out: self.seen.add(out.dtype) if m.training else None
                    )

    probe, layout = OutputDtypes(), write_splits(tmp_path)
    recipe = recipe_for(
        resolve_model("minilm"), "lora", tmp_path, learning_rate=3e-3, max_steps=60, precision="bf16"
    )
    methods.check_supported(recipe)  # accepted before launch
    model_dir = train(recipe, layout, ListLogger(), callbacks=[probe])
    assert probe.seen == {torch.bfloat16}, "matrix products ran in bfloat16"
    summary = json.loads((layout.train_dir / "metrics.json").read_text())
    assert summary["validation"]["accuracy"] >= 0.9, summary["validation"]
    assert summary["export"]["format"] == "merged" and summary["export"]["max_abs_diff"] < 1e-2
    exported = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert {p.dtype for p in exported.parameters()} == {torch.float32}, "weights stay fp32 under autocast"
    assert list(TextClassifier(model_dir).predict(["the film was great number 1"])) == ["pos"]
