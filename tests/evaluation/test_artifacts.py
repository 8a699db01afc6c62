"""The run-page artifacts: plots embedded as PNG data URIs a browser can decode, literal sample text,
sensitivity tables from metrics.json, and training curves from a metric history."""

from __future__ import annotations

import base64
import io

from PIL import Image

from tunery.evaluation import artifacts
from tunery.plotting import figure, save


def a_plot(path, width=9.0, height=3.0):
    fig, ax = figure(width, height)
    ax.plot([0, 1, 2], [2, 0, 1])
    return save(fig, path, dpi=100)


def decoded(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_a_wide_plot_is_embedded_scaled_down_and_still_decodes(tmp_path):
    path = a_plot(tmp_path / "wide.png")  # 900 pixels wide
    image = decoded(artifacts.png_data_uri(path))
    assert image.width == artifacts.MAX_WIDTH and image.height == round(300 * artifacts.MAX_WIDTH / 900)
    assert artifacts.png_data_uri(tmp_path / "missing.png") is None


def test_plots_markdown_embeds_each_existing_plot_and_names_a_missing_one(tmp_path):
    plots = {"roc_curves": a_plot(tmp_path / "roc.png", 5, 5), "reliability": tmp_path / "gone.png"}
    markdown = artifacts.plots_markdown(plots)
    assert markdown.count("data:image/png;base64,") == 1
    assert "gone.png not embedded (missing or too large)" in markdown


def test_generated_text_cannot_become_markup():
    cell = artifacts.escape_cell("![x](http://evil/a.png) <script>alert(1)</script> | next\ncell")
    assert "![x](" not in cell and "<script>" not in cell and "\n" not in cell
    assert "\\|" in cell  # the table stays one cell
    assert len(artifacts.escape_cell("word " * 500)) <= 2 * artifacts.SAMPLE_CHARS


def test_sensitivity_table_rows_follow_metrics():
    sensitivity = {
        "seed": 0,
        "clean": {"accuracy": 0.9, "macro_f1": 0.8},
        "perturbations": {
            "typos": {
                "accuracy": 0.85,
                "macro_f1": 0.7,
                "delta_accuracy": -0.05,
                "delta_macro_f1": -0.1,
                "changed_rows": 12,
            }
        },
        "slices": {"class": {"billing": {"n": 7, "accuracy": 1.0}}},
    }
    markdown = artifacts.sensitivity_markdown(sensitivity)
    assert "| typos | 12 | 0.8500 | -0.0500 | 0.7000 | -0.1000 |" in markdown
    assert "| billing | 7 | 1.0000 |" in markdown
    assert artifacts.sensitivity_markdown(None) == ""


def test_training_curves_are_plotted_from_the_history_and_skipped_without_one(tmp_path):
    history = {
        "train/loss": [(1, 1.2), (2, 0.9), (3, 0.5)],
        "eval_loss": [(3, 0.7)],
        "eval_accuracy": [(3, 0.8)],
    }
    path = artifacts.plot_training_curves(history, tmp_path / "curves.png")
    assert path is not None and Image.open(path).width > 300
    assert artifacts.plot_training_curves({}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
