"""The MLflow pyfuncs that registered tunery models are served as.

- classification: raw text in (a DataFrame with a ``text`` column, or a list of strings); the training-time
  cleaning is applied; out: ``label`` plus one ``prob_<label>`` column per class, and ``error``: '' for a
  scored row, else the reason code the clean stage would have quarantined it with (``empty_text`` for null,
  empty or nothing-left-after-cleaning text, ``too_short``), with label and probabilities null.
- sft: instructions in (a DataFrame with ``instruction`` and optional ``input`` columns, or a list of
  instruction strings); out: the generated ``answer``.
- sft on conversations: ``messages`` (OpenAI chat messages, a list or its JSON text) and optional ``tools``
  in; out: the assistant message, ``content`` and ``tool_calls`` (JSON text of OpenAI tool calls, ``[]``
  when none), and ``raw`` (the generated text as the model wrote it).

The serving environment needs ``tunery`` installed (the serving image and ``tunery serve`` have it).
"""

from __future__ import annotations

import math
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _texts(model_input) -> list[str | None]:
    """The texts of a request; ``None`` where a row has no text (null, NaN)."""
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        values = model_input[column].tolist()
    elif isinstance(model_input, pd.Series):
        values = model_input.tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    else:
        values = list(model_input)
    return [None if _missing(v) else str(v) for v in values]


def _instructions(model_input) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame) and "instruction" in model_input.columns:
        frame = model_input.copy()
    else:
        frame = pd.DataFrame({"instruction": ["" if t is None else t for t in _texts(model_input)]})
    if "input" not in frame.columns:
        frame["input"] = ""
    return frame.fillna("").astype({"instruction": str, "input": str})


def classify_frame(classifier, texts: list[str | None]) -> pd.DataFrame:
    """What the classification pyfunc returns for ``texts``: label, prob_<label> per class, error."""
    cleaned, errors = classifier.prepare(texts)
    keep = [i for i, error in enumerate(errors) if not error]
    probs = classifier.predict_proba([cleaned[i] for i in keep], clean=False)
    columns = [f"prob_{label}" for label in classifier.labels]
    out = pd.DataFrame(np.nan, index=range(len(texts)), columns=columns, dtype="float64")
    labels = pd.Series([None] * len(texts), dtype="object")
    if keep:
        out.iloc[keep, :] = probs
        labels.iloc[keep] = [classifier.labels[i] for i in probs.argmax(axis=1)]
    if len(keep) < len(texts):  # null, not NaN: JSON answers must stay valid JSON
        out = out.astype(object).where(out.notna(), None)
    out.insert(0, "label", labels)
    out["error"] = errors
    return out


def predictions_frame(model_dir: str | Path, texts: list[str]) -> pd.DataFrame:
    """What the classification pyfunc returns for ``texts``, computed from a model folder (signatures)."""
    from tunery.serving.inference import TextClassifier

    return classify_frame(TextClassifier(model_dir), texts)


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    """Raw text in; label, class probabilities and a per-row ``error`` out."""

    def load_context(self, context):
        from tunery.serving.inference import TextClassifier

        self._classifier = TextClassifier(context.artifacts["model_dir"])

    # The hint tells MLflow not to infer a signature from it (tunery declares one, registry.pyfunc_signature);
    # a list of strings or a Series is accepted as well.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return classify_frame(self._classifier, _texts(model_input))


class InstructionModel(mlflow.pyfunc.PythonModel):
    """Instructions in; generated answers out (greedy decoding with the model's chat template)."""

    def load_context(self, context):
        import json

        from transformers import AutoTokenizer

        from tunery.layout import MODEL_META
        from tunery.training.export import load_exported

        model_dir = Path(context.artifacts["model_dir"])
        self._meta = json.loads((model_dir / MODEL_META).read_text())
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self._model = load_exported(model_dir, "sft")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from tunery.training.sft import generate_answers

        rows = _instructions(model_input)
        sft = self._meta.get("sft", {})
        answers = generate_answers(
            self._model,
            self._tokenizer,
            rows,
            system_prompt=sft.get("system_prompt"),
            max_new_tokens=int(
                (params or {}).get("max_new_tokens", sft.get("generation_max_new_tokens", 128))
            ),
            repetition_penalty=float(sft.get("repetition_penalty", 1.0)),
        )
        return pd.DataFrame({"answer": answers})


def _json_cell(value, default):
    import json

    from tunery.data.conversations import plain

    value = plain(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    return json.loads(value) if isinstance(value, str) else value


class ChatModel(InstructionModel):
    """Conversations in (``messages`` and ``tools``); the next assistant message out."""

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        import json

        from tunery.data.conversations import prompt
        from tunery.data.templates import parse_tool_calls
        from tunery.training.sft import generate_replies

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        tools = frame["tools"] if "tools" in frame.columns else [None] * len(frame)
        turns = [
            prompt(_json_cell(messages, []), _json_cell(offered, []))
            for messages, offered in zip(frame["messages"], tools, strict=True)
        ]
        budget = (params or {}).get(
            "max_new_tokens", self._meta.get("sft", {}).get("generation_max_new_tokens", 128)
        )
        penalty = float(self._meta.get("sft", {}).get("repetition_penalty", 1.0))
        replies = generate_replies(
            self._model, self._tokenizer, turns, int(budget), repetition_penalty=penalty
        )
        parsed = [parse_tool_calls(reply) for reply in replies]
        return pd.DataFrame(
            {
                "content": [content for content, _ in parsed],
                "tool_calls": [json.dumps(calls, ensure_ascii=False) for _, calls in parsed],
                "raw": replies,
            }
        )
