"""Human-readable summaries of a run: one metrics line for logs, and a markdown report."""

from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

from tunery.layout import RunLayout

_SKIP = ("n", "exact_match_rows")


def headline_keys(metrics: dict) -> list[str]:
    """The scalar metrics of the model (classification or sft), in a stable order."""
    return [k for k, v in metrics["model"].items() if isinstance(v, int | float) and k not in _SKIP]


def metric_line(metrics: dict) -> str:
    """``accuracy 0.9500 | macro_f1 0.9012 ...`` for the model, then the baselines' primary metric."""
    key = metrics["primary_metric"]
    model = " | ".join(f"{k} {metrics['model'][k]:.4f}" for k in headline_keys(metrics))
    bases = ", ".join(
        f"{name} {key} {vals[key]:.4f}"
        for name, vals in metrics["baselines"].items()
        if isinstance(vals.get(key), int | float)
    )
    generated = (metrics.get("notes") or {}).get("generation")
    return f"{model} (baselines: {bases})" + (f"; {generated}" if generated else "")


def _row(name: str, values: dict | None, keys: list[str]) -> str:
    cells = [f"{values[k]:.4f}" if values and isinstance(values.get(k), int | float) else "–" for k in keys]
    return f"| {name} | " + " | ".join(cells) + " |"


def run_markdown(
    layout: RunLayout, registration, tracking_uri: str | None = None, experiment_id: str | None = None
) -> str:
    """A markdown summary: data counts, test metrics against baselines and champion, gate decision."""
    data = json.loads(layout.data_report.read_text(encoding="utf-8"))
    metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
    clean = data["clean"]
    keys = headline_keys(metrics)
    lines = [
        f"# {registration.model_name} version {registration.version}: **{registration.alias}**",
        "",
        f"Gate: {registration.reason}.",
        "",
        "## Data",
        f"rows in {clean['rows_in']} · kept {clean['kept']} · quarantined {clean['quarantined']} "
        f"{clean['quarantine_reasons']} · duplicates removed {clean['deduplicated']}",
        "",
        "| split | rows | labels |",
        "|---|---|---|",
        *[f"| {name} | {s['rows']} | {s['labels']} |" for name, s in data["split"].items()],
        "",
        "## Test metrics",
        "| model | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
        _row("this run", metrics["model"], keys),
        _row(f"champion (v{metrics.get('champion_version')})", metrics.get("champion"), keys),
        *[_row(f"baseline: {name}", values, keys) for name, values in metrics["baselines"].items()],
        "",
        *signoff_markdown(metrics, getattr(registration, "conditions", ())),
        f"MLflow run `{registration.run_id}` · model `{registration.model_uri}` · run folder `{layout.root}`",
    ]
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        parts = urlsplit(tracking_uri)  # a link never carries `user:password@` (docs/security.md)
        base = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")
        lines += [
            "",
            f"[MLflow run]({base}/#/experiments/{experiment_id}/runs/{registration.run_id}) · "
            f"[model version {registration.version}]({base}/#/models/{registration.model_name}/versions/"
            f"{registration.version})",
        ]
    return "\n".join(lines)


def _figure(value) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "–"


def _interval(low, high) -> str:
    return (
        f"[{low:+.4f}, {high:+.4f}]"
        if isinstance(low, int | float) and isinstance(high, int | float)
        else "–"
    )


def signoff_markdown(metrics: dict, conditions: tuple | list = ()) -> list[str]:
    """The sections a model owner signs off on: every gate condition with its figure, interval and result;
    the evaluation sets; the judge; the benchmark suites; size and latency. Sections without data are left
    out."""
    lines: list[str] = []
    if conditions:
        lines += [
            "## Gate conditions",
            "| condition | figure | compared with | delta | 95% interval | result |",
            "|---|---|---|---|---|---|",
            *[
                f"| {c['name']} | {_figure(c.get('figure'))} | {_figure(c.get('compared_with'))} | "
                f"{_figure(c.get('delta'))} | {_interval(c.get('ci_low'), c.get('ci_high'))} | "
                f"{'pass' if c['passed'] else '**fail**'} |"
                for c in conditions
            ],
            "",
        ]
    key = metrics.get("primary_metric")
    if metrics.get("sets"):
        lines += [
            "## Evaluation sets",
            f"| set | rows | {key} (this run) | {key} (champion) |",
            "|---|---|---|---|",
            *[
                f"| {name} | {entry['n']} | {_figure(entry['model'].get(key))} | "
                f"{_figure((entry.get('champion') or {}).get(key))} |"
                for name, entry in metrics["sets"].items()
            ],
            "",
        ]
    judge = metrics.get("judge")
    if judge:
        rate = judge.get("win_rate")
        lines += [
            "## Judge",
            f"{judge['judge']['model']} at {judge['judge']['url']}, candidate vs {judge.get('opponent')}, "
            f"each prompt asked in both orders: win rate **{_figure(rate)}** "
            f"(95% interval {_interval(judge.get('ci_low'), judge.get('ci_high'))}) over {judge.get('n')} "
            f"prompts · {judge.get('wins')} wins, {judge.get('losses')} losses, {judge.get('ties')} ties, "
            f"{judge.get('invalid')} invalid · position bias {_figure(judge.get('position_bias'))} · "
            f"verdicts `{judge.get('verdicts')}`",
            "",
        ]
    table = (metrics.get("benchmarks") or {}).get("table") or []
    if table:
        columns = list(table[0])
        lines += [
            "## Benchmarks (lm-eval)",
            "| " + " | ".join(columns) + " |",
            "|---" * len(columns) + "|",
            *["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in table],
            "",
        ]
    costs = metrics.get("costs") or {}
    if costs:
        shown = []
        for name, figure in costs.items():
            champion = figure.get("champion")
            shown.append(
                f"{name} {_figure(figure.get('candidate'))}"
                + (f" (champion {_figure(champion)})" if champion is not None else "")
            )
        lines += ["## Cost to serve", " · ".join(shown), ""]
    return lines


def _cell(value) -> str:
    return _figure(value) if isinstance(value, float) else ("–" if value is None else str(value))


def metrics_table(layout: RunLayout) -> list[dict]:
    """One row per model scored on the test split (this run, champion, baselines), headline metrics as
    columns: the Prefect table artifact."""
    metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
    keys = headline_keys(metrics)
    rows = [("this run", metrics["model"])]
    if metrics.get("champion"):
        rows.append((f"champion v{metrics.get('champion_version')}", metrics["champion"]))
    rows += [(f"baseline: {name}", values) for name, values in metrics["baselines"].items()]
    return [
        {
            "model": name,
            **{k: round(float(v[k]), 4) if isinstance(v.get(k), int | float) else None for k in keys},
        }
        for name, v in rows
    ]
