"""Sensitivity a reader can act on: slices by length, label and any grouping column (source file, drop),
each with its 95% interval and a small-slice flag, worst first, written as a CSV, one chart per dimension
and the summary's sensitivity section. A planted predictor is wrong on every row of one source file."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tunery.evaluation import artifacts, robustness
from tunery.layout import RunLayout

LABELS = ["neg", "pos"]
# source file -> rows; the model is wrong on every row of b.csv, d.csv is too small to act on
SOURCES = {"a.csv": 120, "b.csv": 30, "c.csv": 40, "d.csv": 10}
ROWS = sum(SOURCES.values())
OVERALL = 1 - SOURCES["b.csv"] / ROWS  # 0.85


def planted_rows() -> pd.DataFrame:
    """The cue word first, then the file's token, then filler: truncation keeps both, case is ignored."""
    rows = []
    for source, n in SOURCES.items():
        for i in range(n):
            label = LABELS[i % 2]
            cue = "good" if label == "pos" else "bad"
            filler = " ".join(["word"] * (2 + len(rows) % 7))  # varied lengths for the quartiles
            text = f"{cue} file{source[0]} {filler} {len(rows)}"
            rows.append({"text": text, "label": label, "source": source, "drop_id": f"drop{len(rows) % 2}"})
    return pd.DataFrame(rows)


def planted_model(batch: list[str]) -> np.ndarray:
    """Right on the cue word, except on b.csv's rows, where it says the opposite."""
    words = [t.lower().split() for t in batch]
    pos = np.array([("good" in w) != ("fileb" in w) for w in words])
    return np.column_stack([~pos, pos]).astype(float)


@pytest.fixture(scope="module")
def sensitivity() -> dict:
    test = planted_rows()
    groups = {"source": test["source"].tolist(), "drop": test["drop_id"].tolist()}
    return robustness.sensitivity_analysis(
        planted_model, test["text"].tolist(), test["label"].tolist(), LABELS, groups=groups
    )


def test_the_source_the_model_gets_wrong_is_the_worst_slice_and_its_interval_excludes_overall(sensitivity):
    assert sensitivity["clean"]["accuracy"] == pytest.approx(OVERALL)
    table = robustness.slice_table(sensitivity)
    assert list(table.columns[:8]) == robustness.TABLE_COLUMNS
    worst = table.iloc[0]
    assert (worst["dimension"], worst["slice"], worst["n"], worst["accuracy"]) == ("source", "b.csv", 30, 0.0)
    assert worst["delta"] == pytest.approx(-OVERALL)
    assert worst["ci_low"] == 0.0 and worst["ci_high"] < OVERALL
    # the other files are perfect, their intervals reach the overall accuracy
    others = table[(table["dimension"] == "source") & (table["slice"] != "b.csv")]
    assert (others["accuracy"] == 1.0).all() and (others["ci_high"] >= OVERALL).all()


def test_the_table_is_worst_first_ties_by_the_larger_slice(sensitivity):
    table = robustness.slice_table(sensitivity)
    scored = table[table["accuracy"].notna()]
    pairs = list(zip(scored["accuracy"], scored["n"], strict=True))
    assert all(a < b or (a == b and n_a >= n_b) for (a, n_a), (b, n_b) in zip(pairs, pairs[1:], strict=False))
    perfect = scored[scored["accuracy"] == 1.0]
    assert perfect["n"].is_monotonic_decreasing


def test_small_slices_are_flagged(sensitivity):
    table = robustness.slice_table(sensitivity).set_index(["dimension", "slice"])
    assert table.loc[("source", "d.csv"), "small"]  # 10 rows
    assert not table.loc[("source", "b.csv"), "small"]  # 30 rows
    assert (table["small"] == (table["n"] < robustness.SMALL_SLICE)).all()
    assert sensitivity["slices"]["source"]["d.csv"]["small"] is True


def test_a_class_without_test_rows_has_no_accuracy_and_comes_last(sensitivity):
    test = planted_rows()
    out = robustness.sensitivity_analysis(
        planted_model, test["text"].tolist(), test["label"].tolist(), [*LABELS, "spare"]
    )
    assert out["slices"]["class"]["spare"] == {
        "n": 0,
        "accuracy": None,
        "delta_accuracy": None,
        "ci_low": None,
        "ci_high": None,
        "small": True,
    }
    last = robustness.slice_table(out).iloc[-1]
    assert (last["dimension"], last["slice"], last["n"]) == ("label", "spare", 0)
    assert np.isnan(last["accuracy"])


def test_rows_add_up_in_every_dimension(sensitivity):
    table = robustness.slice_table(sensitivity)
    sums = table[table["dimension"] != "perturbation"].groupby("dimension")["n"].sum().to_dict()
    assert sums == {"length": ROWS, "label": ROWS, "source": ROWS, "drop": ROWS}
    perturbations = table[table["dimension"] == "perturbation"]
    assert set(perturbations["slice"]) == set(robustness.PERTURBATIONS)
    assert (perturbations["n"] == ROWS).all()
    # each slice's delta is its accuracy minus the overall one
    assert np.allclose(table["delta"].dropna(), (table["accuracy"] - OVERALL).dropna())


def test_perturbations_report_the_share_of_predictions_that_flipped(sensitivity):
    p = sensitivity["perturbations"]
    assert p["uppercase"]["changed_rows"] == ROWS and p["uppercase"]["flipped"] == 0.0  # case is ignored

    def case_sensitive(batch: list[str]) -> np.ndarray:
        pos = np.array(["good" in t.split() for t in batch])
        return np.column_stack([~pos, pos]).astype(float)

    texts, truth = ["good a", "bad b", "good c", "bad d"], ["pos", "neg", "pos", "neg"]
    upper = robustness.sensitivity_analysis(case_sensitive, texts, truth, LABELS)["perturbations"][
        "uppercase"
    ]
    assert upper["flipped"] == 0.5 and upper["delta_accuracy"] == -0.5
    low, high = upper["ci_low"], upper["ci_high"]
    assert low < upper["accuracy"] < high


def test_wilson_interval():
    low, high = robustness.wilson_interval(0, 30)
    assert low == 0.0 and high == pytest.approx(0.1135, abs=1e-4)
    low, high = robustness.wilson_interval(15, 30)
    assert 0.5 - low == pytest.approx(high - 0.5)
    assert robustness.wilson_interval(0, 0) == (None, None)


def test_groups_must_be_one_value_per_row_and_not_shadow_a_dimension():
    with pytest.raises(ValueError, match="2 values for 3 test rows"):
        robustness.sensitivity_analysis(
            planted_model, ["good", "bad", "good"], ["pos"] * 3, LABELS, groups={"source": ["a", "b"]}
        )
    with pytest.raises(ValueError, match="clashes"):
        robustness.sensitivity_analysis(planted_model, ["good"], ["pos"], LABELS, groups={"label": ["a"]})


def test_an_earlier_runs_dict_still_gives_intervals():
    earlier = {"clean": {"accuracy": 0.9}, "slices": {"class": {"billing": {"n": 30, "accuracy": 0.5}}}}
    row = robustness.slice_table(earlier).iloc[0]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(robustness.wilson_interval(15, 30))
    assert row["delta"] == pytest.approx(-0.4) and not row["small"]


def test_write_sensitivity_writes_the_csv_and_a_valid_chart_per_dimension(sensitivity, tmp_path):
    written = robustness.write_sensitivity(sensitivity, tmp_path / "eval")
    assert list(written) == [
        "sensitivity_length",
        "sensitivity_label",
        "sensitivity_source",
        "sensitivity_drop",
        "sensitivity_perturbation",
    ]
    for name in written.values():
        with Image.open(tmp_path / "eval" / name) as image:
            image.verify()
            assert image.format == "PNG" and image.width >= 600
    csv = pd.read_csv(tmp_path / "eval" / robustness.SENSITIVITY_CSV)
    assert len(csv) == len(robustness.slice_table(sensitivity))
    assert csv.iloc[0][["dimension", "slice", "accuracy"]].tolist() == ["source", "b.csv", 0.0]


def test_the_summary_shows_the_worst_slice_first_with_a_reading_and_the_charts(sensitivity, tmp_path):
    layout = RunLayout(tmp_path / "run")
    charts = robustness.write_sensitivity(sensitivity, layout.eval_dir)
    layout.data_dir.mkdir(parents=True)
    clean = {"rows_in": ROWS, "kept": ROWS, "quarantined": 0, "quarantine_reasons": {}, "deduplicated": 0}
    layout.data_report.write_text(json.dumps({"clean": clean, "split": {}}))
    metrics = {
        "model": {"accuracy": OVERALL},
        "baselines": {},
        "primary_metric": "accuracy",
        "sensitivity": sensitivity,
        "plots": {key: f"eval/{name}" for key, name in charts.items()},
    }
    layout.metrics.write_text(json.dumps(metrics))
    registration = SimpleNamespace(
        model_name="m",
        version=1,
        alias="champion",
        reason="no champion yet",
        run_id="r",
        model_uri="models:/m/1",
    )
    markdown = artifacts.summary_markdown(layout, registration)

    section = markdown[markdown.index("## Sensitivity") :]
    assert "## Plots" not in markdown  # the charts sit in the sensitivity section, not with the others
    assert section.count("data:image/png;base64,") == len(charts)
    assert "**Reading:** worst: source=b.csv 0.00 (n=30), 0.85 below overall; its 95% interval" in section
    table = section[section.index("| dimension | slice |") :].splitlines()
    assert table[2].startswith("| source | b.csv | 30 | 0.0000 | -0.8500 | 0.0000–0.1135 |")
    worst_rows = table[2 : table.index("")]
    assert len(worst_rows) == artifacts.SLICES_SHOWN


def test_the_summary_flags_a_small_slice_and_reads_the_worst_one_that_is_not():
    earlier = {
        "clean": {"accuracy": 0.9},
        "slices": {"source": {"x.csv": {"n": 5, "accuracy": 0.2}, "y.csv": {"n": 50, "accuracy": 0.7}}},
    }
    markdown = artifacts.sensitivity_markdown(earlier)
    assert "| source | x.csv | 5 | 0.2000 | -0.7000 |" in markdown
    assert markdown.index("x.csv | 5") < markdown.index("y.csv | 50")
    assert "(too few rows to act on) |" in markdown.split("x.csv | 5", 1)[1].splitlines()[0]
    assert "worst: source=y.csv 0.70 (n=50), 0.20 below overall" in markdown
    assert "(1 smaller slice score lower: too few rows to act on)" in markdown
