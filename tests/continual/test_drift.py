"""Drift report: PSI arithmetic on small cases, then real drops against real history (sms_spam, ag_news)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from tests.conftest import read_sms_spam
from tunery.config import DriftConfig
from tunery.continual.drift import (
    classifier_two_sample_test,
    drift_markdown,
    drift_report,
    label_psi,
    length_psi,
    population_stability_index,
    vocabulary_psi,
)

MEASURES = ("label PSI", "length PSI", "vocabulary PSI", "two-sample AUC")


# --- PSI and the per-measure functions on small, hand-checkable inputs --------------------------------


def test_psi_of_identical_distributions_is_zero_and_counts_equal_proportions():
    counts = np.array([10, 30, 60])
    assert population_stability_index(counts, counts) == pytest.approx(0.0, abs=1e-12)
    assert population_stability_index(counts, counts * 7) == pytest.approx(0.0, abs=1e-12)
    assert population_stability_index(counts, counts / counts.sum()) == pytest.approx(0.0, abs=1e-12)


def test_psi_grows_with_shift_and_matches_the_formula():
    expected = np.array([0.5, 0.5])
    shifts = [0.5, 0.6, 0.7, 0.8, 0.9]
    values = [population_stability_index(expected, np.array([p, 1 - p])) for p in shifts]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    by_hand = (0.7 - 0.5) * math.log(0.7 / 0.5) + (0.3 - 0.5) * math.log(0.3 / 0.5)
    assert values[2] == pytest.approx(by_hand)


def test_psi_is_finite_with_empty_bins_and_symmetric():
    a, b = np.array([100, 0, 0]), np.array([0, 0, 100])
    psi = population_stability_index(a, b)
    assert math.isfinite(psi) and psi > 10  # empty bins floored at eps: large, not inf
    assert population_stability_index(b, a) == pytest.approx(psi)
    assert math.isfinite(population_stability_index(np.zeros(3), a))


def test_psi_rejects_bins_of_different_lengths():
    with pytest.raises(ValueError, match="same length"):
        population_stability_index(np.ones(3), np.ones(4))


def test_label_psi_uses_the_union_of_labels():
    psi, shares = label_psi(["a", "a", "b", "b"], ["a", "b", "c", "c"])
    assert shares["history"] == {"a": 0.5, "b": 0.5, "c": 0.0}
    assert shares["new"] == {"a": 0.25, "b": 0.25, "c": 0.5}
    assert psi > 0.25  # a label never seen before taking half the drop is a large shift
    assert label_psi(["x", "y"] * 50, ["y", "x"] * 20)[0] == pytest.approx(0.0, abs=1e-12)


def test_length_psi_bins_at_history_quantiles_with_open_outer_bins():
    history = [" ".join(["w"] * n) for n in range(1, 101)]
    same_psi, same = length_psi(history, history[::-1])
    assert same_psi == pytest.approx(0.0, abs=1e-12)
    assert len(same["edges"]) == 9 and sum(same["history_shares"]) == pytest.approx(1.0)
    longer_psi, longer = length_psi(history, [" ".join(["w"] * 500)] * 20)
    assert longer["new_shares"][-1] == 1.0  # far beyond the last edge: still binned (top bin)
    assert longer_psi > 0.25 and longer["new_mean_words"] == 500.0
    assert same["history_mean_words"] == pytest.approx(50.5)


def test_length_psi_deduplicates_edges_of_constant_lengths():
    psi, summary = length_psi(["one two"] * 50, ["one two"] * 10 + ["one"] * 10)
    assert summary["edges"] == [2.0]  # nine equal quantiles collapse into one edge: two bins
    assert summary["history_shares"] == [0.0, 1.0]  # a length equal to an edge goes to the bin above
    assert summary["new_shares"] == [0.5, 0.5]
    assert psi > 0.25


def test_vocabulary_psi_counts_unseen_tokens_and_names_over_represented_words():
    history = ["the cat sat", "The dog sat"] * 10
    psi_same, _ = vocabulary_psi(history, ["the DOG sat", "the cat sat"])
    assert psi_same < 0.01  # lower-cased: "The" and "the" are one word
    psi, summary = vocabulary_psi(history, ["the zebra grazed", "zebra zebra"], top_k=3)
    assert summary["out_of_vocabulary_rate"] == pytest.approx(4 / 5)  # zebra x3, grazed; "the" is known
    assert summary["top_k"] == 3
    assert summary["over_represented"][0]["word"] == "zebra"
    assert psi > 0.25


# --- classifier two-sample test --------------------------------------------------------------------------


def test_two_sample_test_skips_tiny_sides():
    result = classifier_two_sample_test(["a b"] * 9, ["c d"] * 100, max_rows=100, seed=0)
    assert result["auc"] is None and "too few rows" in result["skipped"]


def test_two_sample_test_uses_fewer_folds_for_a_small_side():
    history = [f"history words number {i}" for i in range(200)]
    new = [f"fresh terms item {i}" for i in range(12)]
    result = classifier_two_sample_test(history, new, max_rows=1000, seed=0)
    assert result["folds"] == 2
    assert result["auc"] > 0.9  # disjoint vocabularies are trivially told apart


# --- real data ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sms(shared_data) -> pd.DataFrame:
    frame = read_sms_spam(shared_data)
    assert len(frame) == 5574
    return frame.rename(columns={"Label": "label", "SMS": "text"}).sample(frac=1.0, random_state=0)


@pytest.fixture(scope="module")
def news(shared_data) -> pd.DataFrame:
    frame = pd.read_csv(shared_data / "ag_news" / "test.csv", dtype=str, keep_default_na=False)
    news = pd.DataFrame({"text": frame["title"] + " " + frame["description"], "label": frame["label"]})
    return news.sample(n=1000, random_state=0)


@pytest.fixture(scope="module")
def reports(sms, news, tmp_path_factory) -> dict[str, tuple[dict, object]]:
    """Three drops against the first half of sms_spam: the other half, only spam, and AG News."""
    history, rest = sms.iloc[: len(sms) // 2], sms.iloc[len(sms) // 2 :]
    drops = {"same": rest, "spam_only": rest[rest["label"] == "spam"], "other_domain": news}
    out = {}
    for name, drop in drops.items():
        folder = tmp_path_factory.mktemp(f"drift-{name}")
        out[name] = (drift_report(history, drop, DriftConfig(), folder), folder)
    return out


@pytest.mark.realdata
def test_two_halves_of_the_same_data_do_not_drift(reports):
    report, _ = reports["same"]
    assert report["label"]["psi"] < 0.02
    assert report["length"]["psi"] < 0.05
    assert report["vocabulary"]["psi"] < 0.05
    assert 0.35 < report["two_sample"]["auc"] < 0.65
    assert report["high"] == [] and report["drifted"] is False


@pytest.mark.realdata
def test_a_spam_only_drop_has_high_label_drift(reports):
    report, _ = reports["spam_only"]
    assert report["label"]["new"] == {"ham": 0.0, "spam": 1.0}
    assert report["label"]["psi"] > 1.0
    assert any(line.startswith("label PSI") for line in report["high"])
    assert report["drifted"] is True and report["action"] == "warn"


@pytest.mark.realdata
def test_a_drop_from_another_domain_is_told_apart(reports):
    report, _ = reports["other_domain"]
    assert report["two_sample"]["auc"] > 0.9
    assert report["two_sample"]["rows"] == {"history": 2787, "new": 1000}
    assert report["vocabulary"]["psi"] > 0.25
    assert report["vocabulary"]["out_of_vocabulary_rate"] > 0.2  # news words SMS never used
    assert report["length"]["new_mean_words"] > report["length"]["history_mean_words"]
    highs = " ".join(report["high"])
    assert "two-sample AUC" in highs and "vocabulary PSI" in highs


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["same", "spam_only", "other_domain"])
def test_report_is_written_with_its_plots(reports, name):
    report, folder = reports[name]
    assert json.loads((folder / "drift.json").read_text()) == report
    assert {p.rsplit("/", 1)[-1] for p in report["plots"]} == {"labels.png", "lengths.png", "vocabulary.png"}
    for path in report["plots"]:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert report["rows"]["history"] == 2787
    assert report["drifted"] == bool(report["high"])


@pytest.mark.realdata
def test_two_sample_test_is_seeded_and_bounded(sms):
    texts = sms["text"].tolist()
    first = classifier_two_sample_test(texts[:3000], texts[3000:], max_rows=500, seed=3)
    again = classifier_two_sample_test(texts[:3000], texts[3000:], max_rows=500, seed=3)
    assert first == again
    assert first["rows"] == {"history": 500, "new": 500} and first["folds"] == 5


def test_first_drop_has_no_history_and_is_not_drifted(tmp_path):
    new = pd.DataFrame({"text": ["hello there", "win a prize now"], "label": ["ham", "spam"]})
    empty = new.iloc[:0]
    report = drift_report(empty, new, DriftConfig(action="block"), tmp_path / "drift")
    assert report["drifted"] is False and report["note"] == "no history: first drop"
    assert report["plots"] == [] and report["high"] == []
    assert json.loads((tmp_path / "drift" / "drift.json").read_text()) == report
    assert "first drop" in drift_markdown(report)


@pytest.mark.realdata
def test_markdown_mentions_each_measure_and_the_verdict(reports):
    drifted = drift_markdown(reports["other_domain"][0])
    calm = drift_markdown(reports["same"][0])
    for text in (drifted, calm):
        assert "| measure | value | no-drift level | judged | threshold | high? |" in text
        for measure in MEASURES:
            assert f"| {measure} |" in text
    assert "**drifted** (action: warn)" in drifted and "- high: two-sample AUC" in drifted
    assert "not drifted" in calm and "**yes**" not in calm


def test_sft_rows_drift_on_their_prompts_with_no_label_measure(tmp_path):
    """Conversations drift on their first user turns, instruction rows on instruction + input; with no
    labels there is no label PSI (nor its plot), and the other measures still judge the drop."""
    from tunery.continual.continuous import drift_side

    asks = [f"How do I reset the password of account {k}?" for k in range(60)]
    other = [f"Write a poem about the colour number {k} of the rainbow." for k in range(60)]
    conversations = pd.DataFrame(
        {"prompt": asks, "conversation": "{}", "text": [a + " answer" for a in asks], "label": ""}
    )
    side = drift_side(conversations)
    assert side["text"].tolist() == asks and set(side["label"]) == {""}
    instructions = pd.DataFrame({"instruction": other, "input": ["", "ctx"] * 30, "output": "x", "label": ""})
    assert drift_side(instructions)["text"].tolist()[:2] == [other[0], other[1] + "\nctx"]
    labelled = pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"], "row": [1, 2]})
    assert drift_side(labelled).columns.tolist() == ["text", "label"]

    report = drift_report(side, drift_side(instructions), DriftConfig(), tmp_path)
    assert "label" not in report and not (tmp_path / "labels.png").exists()
    assert report["drifted"] and any("two-sample AUC" in line for line in report["high"])
    assert "label PSI" not in drift_markdown(report) and "length PSI" in drift_markdown(report)
