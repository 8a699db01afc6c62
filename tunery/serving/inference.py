"""Loading a saved tunery classifier and scoring raw text with it (evaluation and serving share this)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tunery.config import CleaningConfig
from tunery.data.clean import clean_text
from tunery.layout import MODEL_META
from tunery.serving.limits import check


class TextClassifier:
    """A saved sequence classifier plus the cleaning it was trained with.

    Args:
        model_dir: a folder written by :func:`tunery.training.train`.
        batch_size: texts per forward pass.
    """

    def __init__(self, model_dir: str | Path, batch_size: int = 64) -> None:
        import torch
        from transformers import AutoTokenizer

        from tunery.training.export import load_exported

        model_dir = Path(model_dir)
        self.meta = json.loads((model_dir / MODEL_META).read_text(encoding="utf-8"))
        self.labels: list[str] = self.meta["labels"]
        self.cleaning = CleaningConfig.model_validate(self.meta["cleaning"])
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = load_exported(model_dir, "classification")  # merged, full or adapter format
        self.batch_size = batch_size
        self._torch = torch

    def predict_proba(self, texts: list[str], clean: bool = True) -> np.ndarray:
        """Class probabilities, shape (len(texts), len(labels)), columns in ``self.labels`` order.

        Inside a served request, the request's budget is checked before each batch
        (:func:`tunery.serving.limits.check` raises once its deadline passed or its client left).

        Args:
            texts: raw texts; ``None`` is treated as empty.
            clean: apply the training-time cleaning first (True for raw input).
        """
        out = []
        with self._torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                check()
                part = texts[start : start + self.batch_size]
                batch = self.tokenizer(
                    [clean_text(t or "", self.cleaning) if clean else (t or "") for t in part],
                    truncation=True,
                    max_length=self.meta["max_length"],
                    padding=True,
                    return_tensors="pt",
                )
                out.append(self._torch.softmax(self.model(**batch).logits.float(), dim=-1).numpy())
        if not out:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return np.concatenate(out)

    def prepare(self, texts: list[str | None]) -> tuple[list[str], list[str]]:
        """The training-time cleaning of raw texts, and per text why it cannot be scored ('' if it can).

        ``empty_text``: null, or nothing left after cleaning; ``too_short``: shorter than
        ``cleaning.min_chars`` after cleaning. The clean stage quarantines both, so the model never saw such
        rows. Longer texts are truncated to ``max_length`` as in training. The request budget is checked
        between batches, as in :meth:`predict_proba`.
        """
        cleaned, errors = [], []
        for i, text in enumerate(texts):
            if i % self.batch_size == 0:
                check()
            value = "" if text is None else clean_text(text, self.cleaning)
            cleaned.append(value)
            errors.append(
                "empty_text" if not value else "too_short" if len(value) < self.cleaning.min_chars else ""
            )
        return cleaned, errors

    def predict(self, texts: list[str], clean: bool = True) -> list[str]:
        """The most probable label of each text."""
        probs = self.predict_proba(texts, clean=clean)
        return [self.labels[i] for i in probs.argmax(axis=1)]
