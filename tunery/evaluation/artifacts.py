"""The pictures and tables of a run's Prefect artifacts, as markdown (no Prefect here: tasks/ publishes it).

The Prefect UI renders a markdown artifact's images as plain ``<img>`` elements, so each PNG is embedded as
a ``data:image/png;base64,...`` URI: the artifact then shows its plots without the browser reaching the run
folder or MLflow. Artifact data is stored in Prefect's database, so every image is limited to
:data:`MAX_WIDTH` pixels and re-encoded with a small palette (a few tens of KB per plot); one that is still
over :data:`MAX_IMAGE_BYTES` is named instead of embedded. Square-ish plots go two side by side (a one-row
table), so that the confusion matrix, ROC curves and reliability diagram are seen at a glance.

- :func:`summary_markdown`: the run summary (gate, data, test metrics) plus the evaluation plots, the
  training curves, the sensitivity section (classification: worst slices first, with their charts) and
  sample generations (sft).
- :func:`with_plots`: any markdown report (data report, drift report) followed by its plots.
- :func:`training_history` and :func:`plot_training_curves`: loss and validation curves from the
  metrics the training job logged to the tracking run.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tunery.evaluation.generation import rouge_l
from tunery.evaluation.report import run_markdown
from tunery.evaluation.robustness import (
    SENSITIVITY_CSV,
    SENSITIVITY_PLOT_PREFIX,
    SMALL_NOTE,
    SMALL_SLICE,
    slice_table,
)
from tunery.layout import RunLayout
from tunery.plotting import pyplot, save

MAX_WIDTH = 800  # pixels: wider plots are scaled down before embedding
PAIR_WIDTH = 380  # pixels: two plots side by side fit the Prefect artifact page of a 1400-pixel window
PAIR_ASPECT = 1.3  # plots at most this wide for their height are paired ...
PAIR_MAX_SOURCE_WIDTH = 700  # ... and at most this wide (a confusion matrix of many labels is shown alone)
PALETTE_COLOURS = 128  # plots have few colours: a palette PNG is about 40% of the RGBA one
MAX_IMAGE_BYTES = 400_000  # of the encoded PNG; larger ones are named, not embedded
SAMPLES_SHOWN = 3  # sft sample generations in the summary
SAMPLE_CHARS = 400  # each text of a sample is cut to this many characters
SLICES_SHOWN = 10  # worst slices in the summary's sensitivity table

# The name the training curves are saved under, in the run's train folder.
TRAINING_CURVES = "curves.png"

# Titles of the evaluation's ``plots`` keys (another key is titled by its own name).
_PLOT_TITLES = {
    "confusion_matrix": "Confusion matrix",
    "roc_curves": "ROC curves",
    "reliability": "Reliability diagram",
    "training_curves": "Training curves",
}
_LOSSES = (("training loss", "train/loss"), ("validation loss", "eval_loss"))
# Trainer log keys that are timings or counters, not curves.
_NOT_CURVES = ("runtime", "samples_per_second", "steps_per_second", "epoch", "total_flos")


def png_data_uri(path: str | Path, max_width: int = MAX_WIDTH) -> str | None:
    """``data:image/png;base64,...`` of a PNG, scaled down to ``max_width`` and palette-encoded; None when
    the file is missing or still over :data:`MAX_IMAGE_BYTES`."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        return None
    with Image.open(path) as image:
        image = image.convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.quantize(colors=PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT).save(buffer, "PNG", optimize=True)
    data = buffer.getvalue()
    if len(data) > MAX_IMAGE_BYTES:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _title(path: Path) -> str:
    return path.stem.replace("_", " ").capitalize()


def _pairs_well(path: Path) -> bool:
    """Whether a PNG is shown in a pair: square-ish, and small enough to stay legible at PAIR_WIDTH."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except OSError:
        return False
    return width / height <= PAIR_ASPECT and width <= PAIR_MAX_SOURCE_WIDTH


def image_markdown(path: str | Path, title: str | None = None, max_width: int = MAX_WIDTH) -> str:
    """``![title](data:...)`` for a PNG, or a line naming it when it cannot be embedded."""
    path = Path(path)
    title = title or _title(path)
    uri = png_data_uri(path, max_width)
    if uri is None:
        return f"_{escape_cell(title)}: {escape_cell(path.name)} not embedded (missing or too large)._"
    return f"![{escape_cell(title)}]({uri})"


def _pair(left: tuple[str, Path], right: tuple[str, Path]) -> str:
    """Two plots side by side: a one-row table under their titles."""
    (ltitle, lpath), (rtitle, rpath) = left, right
    return "\n".join(
        [
            f"| {escape_cell(ltitle)} | {escape_cell(rtitle)} |",
            "|---|---|",
            f"| {image_markdown(lpath, ltitle, PAIR_WIDTH)} | {image_markdown(rpath, rtitle, PAIR_WIDTH)} |",
        ]
    )


def _single(title: str, path: Path, max_width: int = MAX_WIDTH) -> str:
    return f"**{escape_cell(title)}**\n\n{image_markdown(path, title, max_width)}"


def plots_markdown(plots: Mapping[str, str | Path] | Iterable[str | Path], heading: str = "## Plots") -> str:
    """A section with the plots embedded (a mapping gives each plot its title by key, a list by file
    name); empty when there is none. Square-ish plots of modest size (ROC, reliability, a confusion matrix
    of a few labels) go two side by side at :data:`PAIR_WIDTH`, others (training curves, data and drift
    plots, a large confusion matrix) one per row, at most :data:`MAX_WIDTH` wide."""
    if isinstance(plots, Mapping):
        named = [
            (_PLOT_TITLES.get(key, key.replace("_", " ").capitalize()), Path(p)) for key, p in plots.items()
        ]
    else:
        named = [(_title(Path(p)), Path(p)) for p in plots]
    if not named:
        return ""
    blocks, waiting = [heading], None
    for item in named:
        if _pairs_well(item[1]):
            if waiting is None:
                waiting = item
            else:
                blocks.append(_pair(waiting, item))
                waiting = None
            continue
        if waiting is not None:
            blocks.append(_single(*waiting, PAIR_WIDTH))
            waiting = None
        blocks.append(_single(*item))
    if waiting is not None:
        blocks.append(_single(*waiting, PAIR_WIDTH))
    return "\n\n".join(blocks)


def with_plots(markdown: str, plots: Iterable[str | Path] | None, heading: str = "### Plots") -> str:
    """A markdown report followed by its plots (a data or drift report: ``report["plots"]``)."""
    section = plots_markdown(list(plots or []), heading)
    return f"{markdown}\n\n{section}" if section else markdown


def escape_cell(text: object, limit: int = SAMPLE_CHARS) -> str:
    """Text for a markdown table cell, shown literally: one line, at most ``limit`` characters, markdown
    and HTML characters escaped (a generated answer must not become a link, an image or a tag)."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    special = "\\`*_{}[]()<>#+-!|~"
    return "".join(f"\\{ch}" if ch in special else ch for ch in text)


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.4f}"


def _plain(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _interval(row) -> str:
    if row["ci_low"] != row["ci_low"]:  # NaN: a slice without rows
        return "–"
    return f"{row['ci_low']:.4f}–{row['ci_high']:.4f}"


def sensitivity_reading(table) -> str:
    """One plain-language line on :func:`~tunery.evaluation.robustness.slice_table`'s worst slice that has
    enough rows to act on, e.g. ``worst: label=negative 0.71 (n=120), 0.12 below overall``."""
    scored = table[table["accuracy"].notna()]
    actionable = scored[~scored["small"] & scored["n"].notna()]  # an earlier run's perturbations: no n
    if actionable.empty:
        return f"every slice has fewer than {SMALL_SLICE} rows: {SMALL_NOTE}."
    worst = actionable.iloc[0]
    reference = "the clean texts" if worst["dimension"] == "perturbation" else "overall"
    name = escape_cell(f"{worst['dimension']}={worst['slice']}", 120)
    if worst["delta"] >= 0:
        return f"no slice scores below {reference}: worst {name} {worst['accuracy']:.2f} (n={worst['n']})."
    line = f"worst: {name} {worst['accuracy']:.2f} (n={worst['n']}), {-worst['delta']:.2f} below {reference}"
    overall = worst["accuracy"] - worst["delta"]
    if worst["ci_high"] < overall:
        line += f"; its 95% interval {_interval(worst)} lies wholly below {reference}"
    else:
        line += f"; its 95% interval {_interval(worst)} includes {reference}: the gap may be noise"
    smaller = int((scored.index < actionable.index[0]).sum())
    if smaller:
        line += f" ({smaller} smaller slice{'s' * (smaller > 1)} score lower: {SMALL_NOTE})"
    return line + "."


def sensitivity_markdown(sensitivity: Mapping | None, plots: Mapping[str, str | Path] | None = None) -> str:
    """The sensitivity section: a one-line reading, the :data:`SLICES_SHOWN` worst slices (length
    quartiles, classes, groups such as source file or drop, and perturbations; small slices flagged), the
    perturbations (with the share of predictions they flipped), then the per-dimension charts in ``plots``
    embedded; empty without ``metrics.json``'s ``sensitivity``."""
    if not sensitivity:
        return ""
    import pandas as pd

    table = slice_table(sensitivity)
    clean = sensitivity.get("clean", {})
    rows = f" over {sensitivity['n']} test rows" if sensitivity.get("n") else ""
    lines = [
        "## Sensitivity",
        f"clean test texts: accuracy {_plain(clean.get('accuracy'))}, "
        f"macro-F1 {_plain(clean.get('macro_f1'))}{rows} (perturbation seed {sensitivity.get('seed')})",
        "",
        f"**Reading:** {sensitivity_reading(table)}",
        "",
        f"### Worst {min(SLICES_SHOWN, len(table))} of {len(table)} slices "
        f"(`eval/{SENSITIVITY_CSV}` has all)",
        "| dimension | slice | n | accuracy | Δ vs overall | 95% interval |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in table.head(SLICES_SHOWN).iterrows():
        accuracy = "–" if row["accuracy"] != row["accuracy"] else f"{row['accuracy']:.4f}"
        delta = "–" if row["delta"] != row["delta"] else f"{row['delta']:+.4f}"
        flag = f" ({SMALL_NOTE})" if row["small"] else ""
        n = "–" if pd.isna(row["n"]) else row["n"]  # an earlier run's perturbations have no n
        lines.append(
            f"| {escape_cell(row['dimension'])} | {escape_cell(row['slice'], 80)} | {n} | "
            f"{accuracy} | {delta} | {_interval(row)}{flag} |"
        )
    lines += [
        "",
        "| perturbation | rows changed | accuracy | Δ accuracy | macro-F1 | Δ macro-F1 "
        "| predictions flipped |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in sensitivity.get("perturbations", {}).items():
        flipped = "–" if p.get("flipped") is None else f"{p['flipped']:.1%}"
        lines.append(
            f"| {escape_cell(name)} | {p.get('changed_rows', '–')} | {_plain(p.get('accuracy'))} | "
            f"{_signed(p.get('delta_accuracy'))} | {_plain(p.get('macro_f1'))} | "
            f"{_signed(p.get('delta_macro_f1'))} | {flipped} |"
        )
    charts = {
        key.removeprefix(SENSITIVITY_PLOT_PREFIX).replace("_", " ").capitalize(): path
        for key, path in (plots or {}).items()
    }
    section = plots_markdown(charts, "### Accuracy per slice")
    return "\n".join(lines) + (f"\n\n{section}" if section else "")


def samples_markdown(samples: Sequence[Mapping] | None, limit: int = SAMPLES_SHOWN) -> str:
    """The first ``limit`` sft sample generations (instruction, reference, tuned and untuned answers, with
    each answer's ROUGE-L against the reference); empty without samples."""
    if not samples:
        return ""
    lines = [
        f"## Sample generations ({min(limit, len(samples))} of {len(samples)})",
        "| instruction | reference | answer (ROUGE-L) | untuned answer (ROUGE-L) |",
        "|---|---|---|---|",
    ]
    for s in samples[:limit]:
        reference, answer, untuned = s.get("reference", ""), s.get("answer", ""), s.get("untuned_answer", "")
        lines.append(
            f"| {escape_cell(s.get('instruction', ''))} | {escape_cell(reference)} | "
            f"{escape_cell(answer)} ({rouge_l(reference, answer):.2f}) | "
            f"{escape_cell(untuned)} ({rouge_l(reference, untuned):.2f}) |"
        )
    return "\n".join(lines)


def training_history(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """The curves the training job logged to the tracking run: ``train/<key>`` (loss, learning rate,
    gradient norm) and ``eval_<key>`` (validation loss and metrics), each as sorted ``(step, value)``.

    Args:
        client: an ``mlflow.MlflowClient`` bound to the run's store.
        run_id: the pipeline's tracking run.
    """
    keys = [
        key
        for key in client.get_run(run_id).data.metrics
        if key.startswith(("train/", "eval_"))
        and not any(part in key for part in _NOT_CURVES)
        and key != "train/train_loss"  # the run's mean loss, one number
    ]
    history = {}
    for key in sorted(keys):
        points = sorted((int(m.step), float(m.value)) for m in client.get_metric_history(run_id, key))
        if points:
            history[key] = points
    return history


def plot_training_curves(history: Mapping[str, Sequence[tuple[int, float]]], path: Path) -> Path | None:
    """Save the training curves as PNG: loss (train and validation), validation metrics and learning rate
    against the optimiser step, one panel each where there is data. None (nothing written) without any."""
    panels = [
        ("Training and validation loss", [(name, k) for name, k in _LOSSES if k in history]),
        (
            "Validation metrics",
            [(k.removeprefix("eval_"), k) for k in history if k.startswith("eval_") and k != "eval_loss"],
        ),
        ("Learning rate", [("learning rate", k) for k in ("train/learning_rate",) if k in history]),
    ]
    panels = [(title, curves) for title, curves in panels if curves]
    if not panels:
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels, strict=True):
        for label, key in curves:
            steps, values = zip(*history[key], strict=True)
            ax.plot(steps, values, marker="o", markersize=3, label=label)
        ax.set(title=title, xlabel="step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if title != "Learning rate":
            ax.legend(fontsize="small")
        else:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(fig, path, dpi=83)  # 3 panels: 797 pixels wide, embedded without scaling down


def summary_markdown(
    layout: RunLayout, registration, tracking_uri: str | None = None, experiment_id: str | None = None
) -> str:
    """The run summary artifact: :func:`~tunery.evaluation.report.run_markdown` (gate, data, test metrics)
    followed by the evaluation plots, the training curves (``train/curves.png`` where written), the
    sensitivity section with its charts (the ``plots`` keys starting ``sensitivity_``; classification) and
    sample generations (sft)."""
    metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
    plots = {name: layout.root / rel for name, rel in (metrics.get("plots") or {}).items()}
    sensitivity_plots = {k: plots.pop(k) for k in list(plots) if k.startswith(SENSITIVITY_PLOT_PREFIX)}
    curves = layout.train_dir / TRAINING_CURVES
    if curves.is_file():
        plots["training_curves"] = curves
    sections = [
        run_markdown(layout, registration, tracking_uri, experiment_id),
        plots_markdown(plots),
        sensitivity_markdown(metrics.get("sensitivity"), sensitivity_plots),
        samples_markdown(metrics.get("samples")),
    ]
    return "\n\n".join(section for section in sections if section)
