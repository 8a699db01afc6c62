"""Classification evaluation: metrics against scikit-learn, calibration, baselines, perturbations, the
paired bootstrap, plots, and one end-to-end evaluate() on a tiny model (fast, CPU)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from tunery.evaluation import baselines, evaluate, plots, robustness
from tunery.evaluation import metrics as em

PNG = b"\x89PNG\r\n\x1a\n"


def _dirichlet(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(k), size=n)


def _easy_texts(n: int, seed: int) -> pd.DataFrame:
    """Two classes with disjoint cue words amid shared filler."""
    rng = np.random.default_rng(seed)
    cues = {"pos": ["great", "lovely", "excellent", "superb"], "neg": ["awful", "terrible", "poor", "dire"]}
    filler = ["the", "film", "was", "really", "and", "plot", "acting", "quite", "a", "story"]
    rows = []
    for i in range(n):
        label = ["pos", "neg"][i % 2]
        words = (
            rng.choice(filler, size=int(rng.integers(4, 12))).tolist() + rng.choice(cues[label], 2).tolist()
        )
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- metrics


def test_multiclass_metrics_match_sklearn():
    labels = ["zebra", "apple", "mango"]  # not sorted: columns follow `labels`, not the sorted order
    rng = np.random.default_rng(0)
    truth = rng.choice(labels, 200).tolist()
    proba = _dirichlet(200, 3)
    pred = [labels[i] for i in proba.argmax(axis=1)]
    m = em.classification_metrics(truth, pred, labels, proba)
    assert m["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(truth, pred, labels=labels, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(truth, pred, labels=labels, average="weighted"))
    assert m["macro_precision"] == pytest.approx(precision_score(truth, pred, labels=labels, average="macro"))
    assert m["macro_recall"] == pytest.approx(recall_score(truth, pred, labels=labels, average="macro"))
    assert m["per_class"]["apple"]["f1-score"] == pytest.approx(
        f1_score(truth, pred, labels=["apple"], average=None)[0]
    )
    order = np.argsort(labels)  # sklearn's string labels are sorted
    sorted_labels = [labels[i] for i in order]
    assert m["log_loss"] == pytest.approx(log_loss(truth, proba[:, order], labels=sorted_labels))
    assert m["auc_roc"] == pytest.approx(
        roc_auc_score(truth, proba[:, order], multi_class="ovr", average="macro", labels=sorted_labels)
    )
    assert 0.0 <= m["ece"] <= 1.0
    assert "brier" not in m  # binary only


def test_binary_metrics_use_labels_1_as_positive_class():
    labels = ["spam", "ham"]  # positive class is "ham"
    rng = np.random.default_rng(1)
    truth = rng.choice(labels, 150).tolist()
    p_ham = np.clip(np.where(np.array(truth) == "ham", 0.7, 0.3) + rng.normal(0, 0.25, 150), 0, 1)
    proba = np.column_stack([1 - p_ham, p_ham])
    pred = [labels[i] for i in proba.argmax(axis=1)]
    m = em.classification_metrics(truth, pred, labels, proba)
    positive = np.array(truth) == "ham"
    assert m["auc_roc"] == pytest.approx(roc_auc_score(positive, p_ham))
    assert m["brier"] == pytest.approx(brier_score_loss(positive, p_ham))
    assert m["log_loss"] == pytest.approx(log_loss(positive, p_ham))


def test_probability_metrics_are_omitted_without_probabilities():
    m = em.classification_metrics(["a", "b", "a"], ["a", "a", "a"], ["a", "b"])
    assert not {"auc_roc", "log_loss", "ece", "brier"} & set(m)


def test_auc_of_perfect_and_constant_scorers():
    labels = ["neg", "pos"]
    truth = ["neg", "pos"] * 20
    perfect = em.one_hot(truth, labels)
    assert em.probability_metrics(truth, perfect, labels)["auc_roc"] == 1.0
    constant = em.one_hot(["neg"] * len(truth), labels)  # what the majority baseline is scored with
    m = em.probability_metrics(truth, constant, labels)
    assert m["auc_roc"] == 0.5
    assert np.isfinite(m["log_loss"]) and m["log_loss"] > 5  # defined, and large
    three = ["a", "b", "c"] * 10
    assert (
        em.probability_metrics(three, em.one_hot(three, ["a", "b", "c"]), ["a", "b", "c"])["auc_roc"] == 1.0
    )
    assert em.probability_metrics(three, np.full((30, 3), 1 / 3), ["a", "b", "c"])["auc_roc"] == 0.5


def test_undefined_auc_is_omitted_not_faked():
    m = em.probability_metrics(["pos"] * 5, np.tile([0.2, 0.8], (5, 1)), ["neg", "pos"])
    assert "auc_roc" not in m and m["undefined"] == ["auc_roc"]


def _calibration_case(confidence: np.ndarray, correct: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Binary rows whose max probability is `confidence`, right exactly where `correct`."""
    labels = ["a", "b"]
    truth = np.array(labels)[np.arange(len(confidence)) % 2]
    predicted = np.where(correct, truth, np.where(truth == "a", "b", "a"))
    proba = np.where((predicted == "b")[:, None], np.column_stack([1 - confidence, confidence]), 0)
    proba = proba + np.where((predicted == "a")[:, None], np.column_stack([confidence, 1 - confidence]), 0)
    return truth.tolist(), proba


def test_ece_is_near_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(0)
    n = 20_000
    confidence = rng.uniform(0.5, 1.0, n)
    truth, proba = _calibration_case(confidence, rng.random(n) < confidence)
    assert em.expected_calibration_error(truth, proba, ["a", "b"]) < 0.02
    over = np.full(n, 0.99)
    truth, proba = _calibration_case(over, rng.random(n) < 0.6)
    assert em.expected_calibration_error(truth, proba, ["a", "b"]) == pytest.approx(0.39, abs=0.02)


def test_ece_follows_its_definition_on_a_small_case():
    # bins [0.6, 0.7): one row, right; [0.9, 1.0]: two rows at 0.95 and 1.0, one right
    truth, proba = _calibration_case(np.array([0.65, 0.95, 1.0]), np.array([True, True, False]))
    bins = em.reliability_bins(truth, proba, ["a", "b"])
    assert sum(bins["counts"]) == 3 and bins["counts"][6] == 1 and bins["counts"][9] == 2
    expected = 1 / 3 * abs(1 - 0.65) + 2 / 3 * abs(0.5 - 0.975)
    assert em.expected_calibration_error(truth, proba, ["a", "b"]) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------- baselines


def test_tfidf_baseline_beats_majority_on_easy_text():
    train, test = _easy_texts(200, seed=0), _easy_texts(80, seed=1)
    labels = ["neg", "pos"]
    pred, proba = baselines.tfidf_logreg_baseline(train, test["text"].tolist(), labels)
    assert proba.shape == (80, 2) and np.allclose(proba.sum(axis=1), 1)
    truth = test["label"].tolist()
    tfidf = em.classification_metrics(truth, pred, labels, proba)
    majority = baselines.majority_baseline(train, len(test))
    base = em.classification_metrics(truth, majority, labels, em.one_hot(majority, labels))
    assert tfidf["macro_f1"] > 0.9 > base["macro_f1"]
    assert tfidf["auc_roc"] > 0.95 and base["auc_roc"] == 0.5


def test_linear_probe_on_tiny_bert_caps_its_training_rows(tiny_bert):
    train, test = _easy_texts(60, seed=0), _easy_texts(10, seed=1)
    run = [
        baselines.linear_probe_baseline(
            str(tiny_bert), train, test["text"].tolist(), ["neg", "pos"], 32, max_train_rows=40
        )
        for _ in range(2)
    ]
    pred, proba, info = run[0]
    assert len(pred) == 10 and proba.shape == (10, 2) and np.allclose(proba.sum(axis=1), 1)
    assert info["train_rows"] == 40 and info["train_rows_available"] == 60 and "40 of 60" in info["note"]
    np.testing.assert_allclose(run[1][1], proba, rtol=1e-5)  # seeded sample, frozen model: repeatable


# --------------------------------------------------------------------------------------- perturbations

SENTENCE = "The quick brown fox, it seems, jumps over the lazy dog near the old red barn at dawn today"


def test_typos_are_seeded_and_touch_ten_percent_of_words():
    texts = [SENTENCE, "ok", "", "a b c"]
    once, again = robustness.typos(texts, seed=7), robustness.typos(texts, seed=7)
    assert once == again
    assert robustness.typos(texts, seed=8)[0] != once[0]
    words, changed = SENTENCE.split(), once[0].split()
    assert len(changed) == len(words)  # a typo swaps or deletes a character inside one word
    assert sum(a != b for a, b in zip(words, changed, strict=True)) == round(0.1 * len(words))
    assert once[1] in {"ko", "o", "k"}  # at least one word of a text changes
    assert once[2] == "" and once[3] == "a b c"  # nothing to change (no word of 2+ characters)


def test_other_perturbations_do_what_they_say():
    assert robustness.lowercase(["Hello World"]) == ["hello world"]
    assert robustness.uppercase(["Hello World"]) == ["HELLO WORLD"]
    assert robustness.truncate_half(["one two three four five", "one two three four", ""]) == [
        "one two three",
        "one two",
        "",
    ]
    assert robustness.strip_punctuation(["Win £900!!! Call: 0906-170, now."]) == ["Win £900 Call 0906170 now"]
    assert set(robustness.PERTURBATIONS) == {
        "typos",
        "lowercase",
        "uppercase",
        "truncate_half",
        "no_punctuation",
    }


def test_sensitivity_analysis_reports_deltas_and_slices():
    labels = ["neg", "pos"]
    test = _easy_texts(80, seed=3)
    texts, truth = test["text"].tolist(), test["label"].tolist()
    calls = []

    def case_sensitive(batch: list[str]) -> np.ndarray:  # knows the lower-case cue words only
        calls.append(len(batch))
        pos = np.array(
            [any(w in t.split() for w in ("great", "lovely", "excellent", "superb")) for t in batch]
        )
        return np.column_stack([~pos, pos]).astype(float)

    out = robustness.sensitivity_analysis(case_sensitive, texts, truth, labels)
    assert calls == [80] * 6  # clean once, then one pass per perturbation
    p = out["perturbations"]
    assert set(p) == set(robustness.PERTURBATIONS)
    assert p["lowercase"]["delta_macro_f1"] == 0 and p["lowercase"]["changed_rows"] == 0
    assert p["uppercase"]["delta_macro_f1"] < -0.3 and p["uppercase"]["changed_rows"] == 80
    assert p["uppercase"]["macro_f1"] == pytest.approx(
        out["clean"]["macro_f1"] + p["uppercase"]["delta_macro_f1"]
    )
    lengths = out["slices"]["length"]
    assert sum(s["n"] for s in lengths.values()) == 80
    assert all(s["words"][0] <= s["words"][1] for s in lengths.values())
    assert {k: v["n"] for k, v in out["slices"]["class"].items()} == {"neg": 40, "pos": 40}


# ------------------------------------------------------------------------------------ paired bootstrap


def _paired_accuracy(n: int, p_a: float, p_b: float, rng) -> tuple[list, list, list]:
    truth = rng.choice(["x", "y"], n)
    flip = {"x": "y", "y": "x"}
    a = [t if ok else flip[t] for t, ok in zip(truth, rng.random(n) < p_a, strict=True)]
    b = [t if ok else flip[t] for t, ok in zip(truth, rng.random(n) < p_b, strict=True)]
    return truth.tolist(), a, b


def test_bootstrap_ci_covers_the_true_delta():
    rng = np.random.default_rng(0)
    true_delta = 0.80 - 0.75
    covered = 0
    for _ in range(20):
        truth, a, b = _paired_accuracy(500, 0.80, 0.75, rng)
        boot = em.paired_bootstrap(truth, a, b, ["x", "y"], "accuracy", resamples=300, seed=1)
        assert boot["ci_low"] <= boot["delta"] <= boot["ci_high"]
        covered += boot["ci_low"] <= true_delta <= boot["ci_high"]
    assert covered >= 16  # nominal 95 %: 19 of 20 expected


def test_bootstrap_delta_matches_sklearn_and_excludes_zero_for_a_clear_win():
    rng = np.random.default_rng(1)
    truth, a, b = _paired_accuracy(400, 0.9, 0.6, rng)
    boot = em.paired_bootstrap(truth, a, b, ["x", "y"], "macro_f1", resamples=300)
    observed = f1_score(truth, a, average="macro") - f1_score(truth, b, average="macro")
    assert boot["delta"] == pytest.approx(observed)
    assert boot["ci_low"] > 0 and boot["resamples"] == 300 and boot["metric"] == "macro_f1"
    assert em.paired_bootstrap(truth, a, b, ["x", "y"], "macro_f1", resamples=300) == boot  # seeded
    same = em.paired_bootstrap(truth, a, a, ["x", "y"], "weighted_f1", resamples=50)
    assert same["delta"] == same["ci_low"] == same["ci_high"] == 0


# ------------------------------------------------------------------------------------------------ plots


@pytest.mark.parametrize("labels", [["neg", "pos"], ["a", "b", "c"]])
def test_plots_are_png_files(tmp_path, labels):
    rng = np.random.default_rng(0)
    truth = rng.choice(labels, 60).tolist()
    proba = _dirichlet(60, len(labels))
    pred = [labels[i] for i in proba.argmax(axis=1)]
    paths = [
        plots.plot_confusion(truth, pred, labels, tmp_path / "cm.png"),
        plots.plot_roc_curves(truth, proba, labels, tmp_path / "roc.png"),
        plots.plot_reliability(
            truth, {"model": proba, "other": _dirichlet(60, len(labels), 1)}, labels, tmp_path / "rel.png"
        ),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture
def tiny_run(tmp_path, tiny_bert):
    """A run folder with splits and a (random) tiny BERT classifier exported as training would."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tunery.config import CleaningConfig, Recipe
    from tunery.layout import MODEL_META, RunLayout

    layout = RunLayout(tmp_path / "run")
    layout.split("test").parent.mkdir(parents=True)
    _easy_texts(120, seed=0).to_parquet(layout.split("train"))
    _easy_texts(40, seed=1).to_parquet(layout.split("test"))
    labels = ["neg", "pos"]
    config = BertConfig.from_pretrained(tiny_bert, num_labels=2, id2label=dict(enumerate(labels)))
    BertForSequenceClassification(config).save_pretrained(layout.model_dir)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(layout.model_dir)
    meta = {"labels": labels, "cleaning": CleaningConfig().model_dump(mode="json"), "max_length": 32}
    (layout.model_dir / MODEL_META).write_text(json.dumps(meta))
    recipe = Recipe(
        name="tiny",
        data={"source": "unused.csv"},
        model={"base": str(tiny_bert), "max_length": 32},
        mlflow={"registered_model": "tiny"},
        workdir=str(tmp_path),
    )
    return recipe, layout


def test_evaluate_end_to_end(tiny_run):
    from tunery.config import GateConfig
    from tunery.evaluation.report import metric_line, run_markdown
    from tunery.registry import decide

    recipe, layout = tiny_run

    def champion(rows: pd.DataFrame) -> pd.DataFrame:  # the registered pyfunc's output shape
        pos = rows["text"].str.contains("great|lovely|excellent|superb")
        return pd.DataFrame(
            {"label": np.where(pos, "pos", "neg"), "prob_neg": 1.0 * ~pos, "prob_pos": 1.0 * pos}
        )

    metrics = json.loads(evaluate.evaluate(recipe, layout, champion, "3").read_text())
    assert {"labels", "model", "baselines", "champion", "champion_version", "primary_metric"} <= set(metrics)
    assert {"gate_bootstrap", "sensitivity", "plots"} <= set(metrics)
    assert set(metrics["baselines"]) == {"majority", "tfidf_logreg", "linear_probe"}
    for scores in [metrics["model"], metrics["champion"], *metrics["baselines"].values()]:
        assert {"accuracy", "macro_f1", "auc_roc", "log_loss", "ece", "brier"} <= set(scores)
    assert metrics["baselines"]["majority"]["auc_roc"] == 0.5
    assert metrics["baselines"]["linear_probe"]["info"]["train_rows"] == 120
    assert metrics["champion"]["macro_f1"] == 1.0
    boot = metrics["gate_bootstrap"]
    assert boot["metric"] == "macro_f1" and boot["resamples"] == 1000
    assert boot["delta"] == pytest.approx(metrics["model"]["macro_f1"] - 1.0)
    assert set(metrics["sensitivity"]["perturbations"]) == set(robustness.PERTURBATIONS)
    for path in metrics["plots"].values():
        assert (layout.root / path).read_bytes()[:8] == PNG
    assert set(metrics["plots"]) == {
        "confusion_matrix",
        "roc_curves",
        "reliability",
        "sensitivity_length",
        "sensitivity_label",
        "sensitivity_perturbation",
    }
    assert (layout.eval_dir / "sensitivity.csv").is_file()

    rows = pd.read_parquet(layout.eval_dir / "predictions.parquet")
    assert len(rows) == 40
    assert {"predicted", "correct", "prob_neg", "prob_pos", "champion_predicted", "champion_correct"} <= set(
        rows
    )
    assert rows["correct"].mean() == pytest.approx(metrics["model"]["accuracy"])
    assert rows["champion_correct"].all()

    flat = em.headline(metrics)
    for key in ("test_macro_f1", "test_auc_roc", "test_log_loss", "test_ece", "baseline_majority_macro_f1"):
        assert isinstance(flat[key], float)
    assert {"baseline_tfidf_logreg_auc_roc", "baseline_linear_probe_ece", "gate_bootstrap_ci_low"} <= set(
        flat
    )
    assert all(isinstance(v, int | float) for v in flat.values())

    decision = decide(metrics, GateConfig())
    assert decision.alias == "challenger" and "95% CI" in decision.reason  # a random model vs a perfect one

    (layout.data_dir / "report.json").write_text(
        json.dumps(
            {
                "clean": {
                    "rows_in": 160,
                    "kept": 160,
                    "quarantined": 0,
                    "quarantine_reasons": {},
                    "deduplicated": 0,
                },
                "split": {"train": {"rows": 120, "labels": {}}, "test": {"rows": 40, "labels": {}}},
            }
        )
    )
    registration = SimpleNamespace(
        model_name="tiny",
        version="4",
        alias=decision.alias,
        reason=decision.reason,
        run_id="r",
        model_uri="m",
    )
    markdown = run_markdown(layout, registration)
    assert "| baseline: linear_probe |" in markdown and "auc_roc" in markdown
    assert "tfidf_logreg macro_f1" in metric_line(metrics)


def test_champion_giving_labels_only_has_no_probability_metrics(tiny_run, monkeypatch):
    monkeypatch.setattr(evaluate, "BOOTSTRAP_RESAMPLES", 100)
    recipe, layout = tiny_run
    metrics = json.loads(evaluate.evaluate(recipe, layout, lambda rows: ["pos"] * len(rows), "1").read_text())
    assert "auc_roc" not in metrics["champion"] and "labels only" in metrics["champion"]["note"]
    assert metrics["gate_bootstrap"]["n"] == 40 and metrics["gate_bootstrap"]["resamples"] == 100


def test_evaluation_measures_the_guards_figures_for_both_models(tiny_run):
    """Latency (one-row requests through the pyfunc's scoring function) and size of the candidate and of the
    champion's folder, the floor against the strongest baseline, and every guard's figures with intervals."""
    from tunery.config import GateConfig
    from tunery.registry import decide

    recipe, layout = tiny_run
    gate = GateConfig(
        guards=[
            {"metric": "latency_p95_ms", "margin": 10.0},
            {"metric": "model_mb", "margin": 0.0},
            {"metric": "recall:pos", "margin": 0.05},
        ]
    )
    recipe = recipe.model_copy(
        update={"evaluation": recipe.evaluation.model_copy(update={"gate": gate, "latency_rows": 8})}
    )

    def champion(rows: pd.DataFrame) -> pd.DataFrame:  # says "pos" to everything
        n = len(rows)
        return pd.DataFrame({"label": ["pos"] * n, "prob_neg": np.zeros(n), "prob_pos": np.ones(n)})

    # the champion's folder is the same model: the same size, a similar latency
    path = evaluate.evaluate(recipe, layout, champion, "1", champion_dir=layout.model_dir)
    metrics = json.loads(path.read_text())
    figures = {g["guard"]: g for g in metrics["guards"]}
    latency = figures["latency_p95_ms"]
    assert latency["n"] == 8 and latency["candidate"] > 0 and latency["champion"] > 0
    assert latency["ci_low"] <= latency["delta"] <= latency["ci_high"]
    size = figures["model_mb"]
    assert size["candidate"] == size["champion"] > 0
    assert metrics["model"]["model_mb"] == size["candidate"]
    recall = figures["recall:pos"]
    assert recall["champion"] == 1.0 and recall["ci_low"] <= recall["delta"] <= recall["ci_high"]
    floor = metrics["baseline_floor"]
    assert floor["baseline_value"] == max(floor["candidates"].values())
    assert set(floor["candidates"]) == {"tfidf_logreg", "linear_probe", "majority"}
    decision = decide(metrics, gate)
    names = [c["name"] for c in decision.conditions]
    assert names == [
        "primary",
        "baseline_floor",
        "guard latency_p95_ms",
        "guard model_mb",
        "guard recall:pos",
    ]
    assert next(c for c in decision.conditions if c["name"] == "guard model_mb")["passed"]
