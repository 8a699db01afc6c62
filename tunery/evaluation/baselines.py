"""Baselines scored on the same test rows as the model: majority class, TF-IDF + logistic regression,
and a linear probe on the frozen base encoder's mean-pooled embeddings."""

from collections.abc import Sequence

import numpy as np
import pandas as pd

from tunery.evaluation.metrics import align_proba, argmax_labels

PROBE_MAX_TRAIN_ROWS = 5_000
PROBE_BATCH_SIZE = 64


def majority_baseline(train: pd.DataFrame, n: int) -> list[str]:
    """Predict the most frequent training label for every test row."""
    return [train["label"].value_counts().idxmax()] * n


def tfidf_logreg_baseline(
    train: pd.DataFrame, texts: Sequence[str], labels: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """Word 1-2 gram TF-IDF + balanced logistic regression fitted on ``train`` (text, label).

    Returns:
        The predicted labels of ``texts`` and their class probabilities in ``labels`` order.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline(
        [
            ("tfidf", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)),
            ("logreg", LogisticRegression(max_iter=1000, class_weight="balanced")),
        ]
    )
    pipeline.fit(train["text"].tolist(), train["label"].astype(str).tolist())
    proba = align_proba(pipeline.predict_proba(list(texts)), pipeline.classes_, labels)
    return argmax_labels(proba, labels), proba


def mean_pooled_embeddings(
    model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = PROBE_BATCH_SIZE
) -> np.ndarray:
    """Mean of the last hidden states over the non-padding tokens, one row per text (frozen model)."""
    import torch

    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths per batch: less padding
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] or "" for i in rows],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[rows] = ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).numpy()
    return out


def linear_probe_baseline(
    base: str,
    train: pd.DataFrame,
    texts: Sequence[str],
    labels: Sequence[str],
    max_length: int,
    seed: int = 0,
    max_train_rows: int = PROBE_MAX_TRAIN_ROWS,
    batch_size: int = PROBE_BATCH_SIZE,
) -> tuple[list[str], np.ndarray, dict]:
    """The untuned base model as a linear probe: standardised mean-pooled last hidden states of the frozen
    encoder + balanced logistic regression, fitted on at most ``max_train_rows`` seeded training rows.

    Args:
        base: a folder or hub id for ``AutoModel`` and ``AutoTokenizer`` (the recipe's base model, see
            :func:`tunery.models.resolve_model`).

    Returns:
        Predicted labels, class probabilities (``labels`` order) and what the probe was fitted on.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from transformers import AutoModel, AutoTokenizer

    sample = train.sample(n=max_train_rows, random_state=seed) if len(train) > max_train_rows else train
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(base).eval()
    train_x = mean_pooled_embeddings(model, tokenizer, sample["text"].tolist(), max_length, batch_size)
    test_x = mean_pooled_embeddings(model, tokenizer, list(texts), max_length, batch_size)
    del model
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, class_weight="balanced"))
    probe.fit(train_x, sample["label"].astype(str).tolist())
    proba = align_proba(probe.predict_proba(test_x), probe.classes_, labels)
    info = {
        "train_rows": len(sample),
        "train_rows_available": len(train),
        "max_train_rows": max_train_rows,
        "seed": seed,
        "note": (
            f"frozen base encoder, mean-pooled last hidden states, max_length {max_length}; logistic "
            f"regression fitted on {len(sample)} of {len(train)} training rows (capped at {max_train_rows}, "
            "seeded sample, to bound CPU time)"
        ),
    }
    return argmax_labels(proba, labels), proba, info
