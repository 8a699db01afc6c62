"""Where a registered model version comes from: the drops it was trained on (continuous learning) and the
registered model it started from (``model.init_from``: an SFT parent of a preference-tuned model, say)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path


class LineageError(ValueError):
    """The model reference cannot be resolved, or the version has no lineage."""


def parse_reference(reference: str) -> tuple[str, str | None, str | None]:
    """``NAME@ALIAS``, ``NAME@VERSION``, ``NAME/VERSION`` or ``NAME`` (champion) -> (name, alias, version)."""
    name, sep, rest = reference.partition("@")
    if not sep:
        name, sep, rest = reference.partition("/")
        if sep and not rest.isdigit():
            raise LineageError(f"{reference!r}: expected NAME@ALIAS, NAME@VERSION or NAME/VERSION")
    if not name or (sep and not rest):
        raise LineageError(f"{reference!r}: expected NAME@ALIAS, NAME@VERSION or NAME/VERSION")
    if not sep:
        return name, "champion", None
    return (name, None, rest) if re.fullmatch(r"\d+", rest) else (name, rest, None)


def lineage(reference: str, tracking_uri: str) -> dict:
    """The lineage of a registered model version.

    Returns:
        ``model``, ``version``, ``aliases``, ``run_id``, ``parent`` (the version training started from:
        ``reference``, ``model``, ``version``, ``run_id``; None when it started from a base model),
        ``dataset_version``, ``drops`` (id, sha256, name, uri, arrived_at, rows per drop), ``new_drops``
        (those the version's run added) and ``cost`` (one line: wall, CPU and GPU time, peak memory,
        energy and money of its run; None for a version registered before tunery measured it); no drops
        (``dataset_version`` None) when it was not trained by continuous learning.

    Raises:
        LineageError: unknown model/alias/version, or a version with neither drops nor a parent.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, alias, number = parse_reference(reference)
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, number)
        )
    except MlflowException as exc:
        raise LineageError(f"{reference}: no such model version ({exc.message})") from None
    tags = mv.tags or {}
    found = {
        "model": name,
        "version": str(mv.version),
        "aliases": list(mv.aliases or []),
        "run_id": mv.run_id,
        "parent": parent_of(tags),
        "cost": tags.get("tunery.cost"),  # what its run cost (tunery.tracking.log_cost); None before that
    }
    if "tunery.dataset.version" not in tags:
        if found["parent"] is None:
            raise LineageError(
                f"{name} version {mv.version} has no lineage: it was not trained by continuous learning "
                "and started from a base model, not a registered one"
            )
        return {**found, "dataset_version": None, "drops": [], "new_drops": []}
    scratch = tempfile.mkdtemp(prefix="tunery-lineage-")
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id,
            artifact_path="lineage/lineage.json",
            dst_path=scratch,
            tracking_uri=tracking_uri,
        )
        record = json.loads(Path(local).read_text(encoding="utf-8"))
    except (MlflowException, OSError) as exc:
        # the artifact store is unreachable: the version's tags still name every drop (id:sha256)
        listing = tags.get("tunery.drops", "")
        if not listing or " " in listing:  # absent, or shortened to "N drops: see lineage/lineage.json"
            raise LineageError(
                f"{name} version {mv.version}: lineage/lineage.json unreadable ({exc})"
            ) from None
        drops = [dict(zip(("id", "sha256"), d.split(":", 1), strict=True)) for d in listing.split(",")]
        record = {
            "dataset_version": int(tags["tunery.dataset.version"]),
            "drops": drops,
            "new_drops": [d for d in tags.get("tunery.drops.new", "").split(",") if d],
        }
    return {**found, **{k: record[k] for k in ("dataset_version", "drops", "new_drops")}}


def parent_of(tags: dict[str, str]) -> dict | None:
    """The parent a version's ``tunery.parent*`` tags name (``tunery.registry`` writes them), or None."""
    if "tunery.parent.run_id" not in tags:
        return None
    return {
        "reference": tags.get("tunery.parent.reference", ""),  # model.init_from, or NAME@N of a warm start
        "model": tags.get("tunery.parent.model"),
        "version": tags.get("tunery.parent.version"),
        "run_id": tags["tunery.parent.run_id"],
    }


def lineage_text(info: dict) -> str:
    """A plain-text table of a lineage, for the terminal."""
    aliases = f" ({', '.join(info['aliases'])})" if info["aliases"] else ""
    lines = [f"{info['model']} version {info['version']}{aliases}: run {info['run_id']}"]
    if info.get("cost"):
        lines.append(f"cost of its run: {info['cost']}")
    parent = info.get("parent")
    if parent:
        named = f"{parent['model']} version {parent['version']}" if parent.get("model") else "a run's model"
        lines.append(f"trained from {named} (run {parent['run_id']})")
    if info.get("dataset_version") is None:
        lines.append("not trained by continuous learning: no drops")
        return "\n".join(lines)
    lines += [
        f"dataset version {info['dataset_version']}, {len(info['drops'])} drop(s); new in this version: "
        f"{', '.join(info['new_drops']) or 'none'}",
        f"{'drop':<17} {'sha256':<64} {'rows':>6}  {'arrived (UTC)':<24} name",
    ]
    for d in info["drops"]:
        rows = d.get("rows", "")
        lines.append(
            f"{d['id']:<17} {d['sha256']:<64} {rows!s:>6}  {d.get('arrived_at', ''):<24} {d.get('name', '')}"
        )
    return "\n".join(lines)
