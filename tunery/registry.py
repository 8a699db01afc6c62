"""The MLflow model registry: log the model as a pyfunc, register a version, apply the champion gate."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from tunery.config import Recipe
from tunery.evaluation.gate import CHALLENGER, CHAMPION, GateDecision, decide
from tunery.evaluation.metrics import headline
from tunery.layout import RunLayout
from tunery.tracking import client, git_commit

# What the registered pyfunc needs at load time; versions are taken from this environment.
_SERVING_PACKAGES = (
    "torch",
    "transformers",
    "pandas",
    "numpy",
    "scikit-learn",
    "mlflow",
    "pydantic",
    "pyyaml",
)


@dataclass(frozen=True)
class Registration:
    """What the register stage did, as printed by the CLI."""

    model_name: str
    version: str
    alias: str
    reason: str
    run_id: str
    model_uri: str
    test_metrics: dict
    # every gate condition with its figure, interval and pass/fail (tunery.evaluation.gate.decide)
    conditions: tuple = ()


def current_champion(recipe: Recipe) -> str | None:
    """The version number aliased ``champion`` for the recipe's registered model, if any."""
    from mlflow.exceptions import MlflowException

    try:
        return str(
            client(recipe).get_model_version_by_alias(recipe.mlflow.registered_model, CHAMPION).version
        )
    except MlflowException:
        return None


def load_predictor(recipe: Recipe, version: str) -> Callable[[pd.DataFrame], list[str] | pd.DataFrame]:
    """Load a registered version through MLflow (as serving would).

    Returns:
        test rows -> answers (sft), or the pyfunc's frame: ``label`` and one ``prob_<label>`` column per
        class (classification; evaluation scores the labels and, when they match, the probabilities).
    """
    import mlflow

    client(recipe)
    model = mlflow.pyfunc.load_model(
        f"models:/{recipe.mlflow.registered_model}/{version}",
        dst_path=tempfile.mkdtemp(prefix="tunery-champion-"),
    )
    if recipe.data.conversation is not None:  # rows: messages and tools of conversation turns
        return lambda rows: model.predict(_as_json(rows[["messages", "tools"]]))["raw"].tolist()
    if recipe.task == "sft":
        return lambda rows: model.predict(rows[["instruction", "input"]])["answer"].tolist()
    return lambda rows: model.predict(pd.DataFrame({"text": rows["text"]}))


def _as_json(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.map(lambda v: json.dumps(v, ensure_ascii=False))


def _pyfunc(recipe: Recipe, layout: RunLayout):
    """The pyfunc to log for the task, with an input example and its output (for the signature)."""
    from tunery.serving.pyfunc import ChatModel, InstructionModel, TextClassifierModel, predictions_frame

    test = pd.read_parquet(layout.split("test"))
    if recipe.task == "preference":  # an assistant: it answers chat messages like an SFT chat model
        first = json.loads(test["pair"].iloc[0])
        example = _as_json(pd.DataFrame({"messages": [first["prompt"]], "tools": [first["tools"]]}))
        output = pd.DataFrame({"content": ["an answer"], "tool_calls": ["[]"], "raw": ["an answer"]})
        return ChatModel(), example, output
    if recipe.data.conversation is not None:
        first = json.loads(test["conversation"].iloc[0])
        turn = next(i for i, m in enumerate(first["messages"]) if m["role"] == "assistant")
        example = _as_json(pd.DataFrame({"messages": [first["messages"][:turn]], "tools": [first["tools"]]}))
        output = pd.DataFrame({"content": ["an answer"], "tool_calls": ["[]"], "raw": ["an answer"]})
        return ChatModel(), example, output
    if recipe.task == "sft":
        example = test[["instruction", "input"]].head(1).reset_index(drop=True)
        return InstructionModel(), example, pd.DataFrame({"answer": ["an answer"]})
    example = pd.DataFrame({"text": test["text"].head(3).tolist()})
    return TextClassifierModel(), example, predictions_frame(layout.model_dir, example["text"].tolist())


def pyfunc_signature(recipe: Recipe, layout: RunLayout):
    """The registered pyfunc's signature, declared rather than inferred from an example (an inferred one
    guesses column types from three rows, and MLflow warns about each integer it sees).

    classification: ``text`` (string) in; ``label`` (string, null for a row with an ``error``),
    ``prob_<label>`` (double) per class and ``error`` ('' or a quarantine reason code) out.
    sft: ``instruction`` and optional ``input`` (strings) in, ``answer`` out; param ``max_new_tokens``.
    conversations and preference-tuned models: ``messages`` and optional ``tools`` (JSON text) in;
    ``content``, ``tool_calls`` (JSON text) and ``raw`` out; param ``max_new_tokens``.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from tunery.layout import MODEL_META

    budget = ParamSchema([ParamSpec("max_new_tokens", "long", recipe.sft.generation_max_new_tokens)])
    if recipe.data.conversation is not None or recipe.task == "preference":
        return ModelSignature(
            inputs=Schema([ColSpec("string", "messages"), ColSpec("string", "tools", required=False)]),
            outputs=Schema([ColSpec("string", n) for n in ("content", "tool_calls", "raw")]),
            params=budget,
        )
    if recipe.task == "sft":
        return ModelSignature(
            inputs=Schema([ColSpec("string", "instruction"), ColSpec("string", "input", required=False)]),
            outputs=Schema([ColSpec("string", "answer")]),
            params=ParamSchema([ParamSpec("max_new_tokens", "long", recipe.sft.generation_max_new_tokens)]),
        )
    labels = json.loads((layout.model_dir / MODEL_META).read_text(encoding="utf-8"))["labels"]
    return ModelSignature(
        inputs=Schema([ColSpec("string", "text")]),
        outputs=Schema(
            [
                ColSpec("string", "label", required=False),
                *(ColSpec("double", f"prob_{c}", required=False) for c in labels),
                ColSpec("string", "error"),
            ]
        ),
    )


def _requirements() -> list[str]:
    reqs = []
    for pkg in _SERVING_PACKAGES:
        try:
            version = importlib.metadata.version(pkg).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            continue
        reqs.append(f"{pkg}=={version}")
    return reqs


def _log_run_outputs(layout: RunLayout, metrics: dict) -> None:
    """Log test metrics and the evaluation and training files (the data stage logged its own)."""
    import mlflow

    mlflow.log_metrics(headline(metrics))
    train_summary = layout.train_dir / "metrics.json"
    if train_summary.exists():
        mlflow.log_artifact(str(train_summary), "train")
    mlflow.log_artifacts(str(layout.eval_dir), "eval")


def _split_digest_tags(layout: RunLayout) -> dict[str, str]:
    """``tunery.data.<split>_digest`` tags from the data report (the same digests as the run's inputs)."""
    if not layout.data_report.exists():
        return {}
    report = json.loads(layout.data_report.read_text(encoding="utf-8"))
    return {
        f"tunery.data.{name}_digest": str(summary["digest"])
        for name, summary in report.get("split", {}).items()
        if "digest" in summary
    }


def _lineage_tags(layout: RunLayout) -> dict[str, str]:
    """Continuous learning: the dataset version and its drops (ids and content hashes) as version tags."""
    path = layout.root / "lineage.json"
    if not path.exists():
        return {}
    lineage = json.loads(path.read_text(encoding="utf-8"))
    drops = [f"{d['id']}:{d['sha256']}" for d in lineage["drops"]]
    tags = {
        "tunery.dataset.version": str(lineage["dataset_version"]),
        "tunery.drops.count": str(len(drops)),
        "tunery.drops.new": ",".join(lineage["new_drops"]),
    }
    listing = ",".join(drops)
    # MLflow caps a tag value at 5,000 characters; the full list is always in the run's lineage/lineage.json
    tags["tunery.drops"] = (
        listing if len(listing) <= 5000 else f"{len(drops)} drops: see lineage/lineage.json"
    )
    return tags


def still_current(recipe: Recipe, metrics: dict, decision: GateDecision) -> GateDecision:
    """No promotion over a champion this run was not compared with (another run promoted one meanwhile)."""
    if decision.alias != CHAMPION:
        return decision
    compared = metrics.get("champion_version")
    now = current_champion(recipe)
    if now is None or str(now) == str(compared):
        return decision
    was = f"version {compared}" if compared else "no champion"
    reason = f"the champion changed during this run ({was} -> version {now}), so it was not compared with it"
    return GateDecision(CHALLENGER, f"{reason}: not promoted", decision.challenger_score, None)


def gate_condition_tags(decision: GateDecision) -> dict[str, str]:
    """One MLflow tag per gate condition: ``tunery.gate.condition.<name>`` = ``pass|fail: <figures>``
    (a tag key takes letters, digits and ``_-./ :``; other characters of a guard's name become ``_``)."""
    tags = {}
    for condition in decision.conditions:
        key = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", condition["name"]).replace(" ", "_")
        verdict = "pass" if condition["passed"] else "fail"
        tags[f"tunery.gate.condition.{key}"] = f"{verdict}: {condition['text']}"[:5000]
    return tags


def register(recipe: Recipe, layout: RunLayout, run_id: str) -> Registration:
    """Log the model into the run, register it as a new version and alias it by the gate.

    Returns:
        The registration: model name, version, alias given, the gate's reason and the test metrics.
    """
    import mlflow

    metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
    python_model, example, _ = _pyfunc(recipe, layout)
    signature = pyfunc_signature(recipe, layout)
    name = recipe.mlflow.registered_model
    run_experiment = client(recipe).get_run(run_id).info.experiment_id
    # MLflow refuses to resume a run while another experiment is active in this process (a notebook's or
    # an earlier set_experiment): make the run's own experiment the active one first
    mlflow.set_experiment(experiment_id=run_experiment)
    with mlflow.start_run(run_id=run_id):
        _log_run_outputs(layout, metrics)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=python_model,
            artifacts={"model_dir": str(layout.model_dir)},
            pip_requirements=_requirements(),
            signature=signature,
            input_example=example,
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    decision = still_current(recipe, metrics, decide(metrics, recipe.evaluation.gate, recipe.task))
    mlf = client(recipe)
    tags = {
        "tunery.gate.decision": decision.alias,
        "tunery.gate.reason": decision.reason,
        "tunery.gate.compared_with": str(metrics.get("champion_version")),
        "tunery.recipe_digest": recipe.digest(),
        "tunery.git_commit": git_commit(),
        **_split_digest_tags(layout),
        **_lineage_tags(layout),
        **_parent_tags(layout),
        f"tunery.test.{recipe.evaluation.gate.metric(recipe.task)}": f"{decision.challenger_score:.6f}",
    }
    if decision.ci_low is not None:
        tags["tunery.gate.ci"] = f"[{decision.ci_low:.6f}, {decision.ci_high:.6f}]"
    tags.update(gate_condition_tags(decision))
    for key, value in tags.items():
        mlf.set_model_version_tag(name, version, key, value)
    mlf.set_tag(run_id, "tunery.gate", json.dumps(asdict(decision)))
    # the alias last: a version is never champion without its gate and lineage tags
    mlf.set_registered_model_alias(name, decision.alias, version)
    return Registration(
        model_name=name,
        version=version,
        alias=decision.alias,
        reason=decision.reason,
        run_id=run_id,
        model_uri=f"models:/{name}@{decision.alias}",
        test_metrics={k: v for k, v in metrics["model"].items() if isinstance(v, float)},
        conditions=decision.conditions,
    )


# ------------------------------------------------------------------------------------- continuous learning


def trained_versions(recipe: Recipe) -> set[int]:
    """Dataset versions that already have a registered model version (tag ``tunery.dataset.version``)."""
    from tunery.tracking import client

    found = set()
    for mv in client(recipe).search_model_versions(f"name='{recipe.mlflow.registered_model}'"):
        value = (mv.tags or {}).get("tunery.dataset.version")
        if value and value.isdigit():
            found.add(int(value))
    return found


def warm_start(recipe: Recipe, layout: RunLayout) -> tuple[Recipe, str]:
    """The recipe to train with: ``model.init_from`` set to the champion's exported model when the recipe
    asks for a warm start, a champion exists, and its labels are this run's labels; else unchanged.

    Returns:
        The recipe, and a sentence saying which weights training starts from and why.
    """
    from tunery.layout import MODEL_META
    from tunery.training.loop import label_list

    if recipe.continuous is None or recipe.continuous.warm_start == "base":
        return (
            recipe,
            f"training starts from the base model {recipe.model.base} (continuous.warm_start: base)",
        )
    version = current_champion(recipe)
    if version is None:
        return recipe, f"no champion yet: training starts from the base model {recipe.model.base}"
    folder = download_model_dir(recipe, version, layout.root / "warm_start")
    meta = json.loads((folder / MODEL_META).read_text(encoding="utf-8"))
    if meta.get("export_format") == "adapter":
        return recipe, (
            f"champion version {version} is an adapter export ({meta.get('method')}): its virtual tokens "
            f"cannot seed a new model, training starts from the base model {recipe.model.base}"
        )
    labels = (
        label_list(recipe, pd.read_parquet(layout.split("train")))
        if recipe.task == "classification"
        else None
    )
    if meta.get("task", recipe.task) != recipe.task:
        return recipe, (
            f"champion version {version} is a {meta.get('task')} model, this recipe's task is {recipe.task}: "
            f"training starts from the base model {recipe.model.base}"
        )
    if recipe.task == "classification" and meta.get("labels") != labels:
        return recipe, (
            f"champion version {version} has labels {meta.get('labels')}, this data {labels}: "
            f"training starts from the base model {recipe.model.base}"
        )
    warm = recipe.model_copy(update={"model": recipe.model.model_copy(update={"init_from": str(folder)})})
    name = recipe.mlflow.registered_model
    parent = {"reference": f"{name}@{version}", "model": name, "version": str(version)}
    parent["run_id"] = client(recipe).get_model_version(name, str(version)).run_id
    layout.parent.write_text(json.dumps(parent, indent=2), encoding="utf-8")  # the new version's lineage
    return warm, f"warm start from champion version {version} ({folder})"


def evaluated_champion_dir(recipe: Recipe, layout: RunLayout) -> Path | None:
    """The model folder of the champion this run was evaluated against (``champion_version`` in
    ``eval/metrics.json``), downloaded into ``<run>/champion`` (None when there was no champion)."""
    metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
    version = metrics.get("champion_version") if metrics.get("champion") else None
    if version is None:
        return None
    return download_model_dir(recipe, str(version), layout.root / "champion")


def download_model_dir(recipe: Recipe, version: str, target: Path, uri: str | None = None) -> Path:
    """The exported model folder inside a registered pyfunc version's artifacts (of the recipe's model, or
    at the MLflow ``uri`` given: ``models:/NAME/VERSION``, ``runs:/RUN_ID/model``)."""
    import mlflow

    from tunery.layout import MODEL_META
    from tunery.tracking import client

    client(recipe)
    scratch = Path(tempfile.mkdtemp(prefix="tunery-warm-"))
    uri = uri or f"models:/{recipe.mlflow.registered_model}/{version}"
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(scratch)))
        meta = next(local.rglob(MODEL_META), None)
        if meta is None:
            raise FileNotFoundError(f"{uri} has no {MODEL_META}: not a tunery model")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(meta.parent, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------------------ chaining

_RUN_REFERENCE = re.compile(r"runs:/([0-9a-f]{32})(/.*)?")
_MODEL_REFERENCE = re.compile(r"(?:models:/)?([A-Za-z0-9_.-]+)(?:@([A-Za-z0-9_.-]+)|/(\d+))")


def start_reference(init_from: str | None) -> tuple[str, str, str | None] | None:
    """``model.init_from`` as a registry reference: ``(kind, name or run id, alias or version)`` for
    ``NAME@ALIAS``, ``NAME@VERSION``, ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` and
    ``runs:/RUN_ID[/model]``; None for a local folder or a hub id (``org/name``)."""
    if not init_from or Path(init_from).exists():
        return None
    if run := _RUN_REFERENCE.fullmatch(init_from):
        return "run", run[1], None
    model = _MODEL_REFERENCE.fullmatch(init_from)
    if model and ("@" in init_from or init_from.startswith("models:/")):
        return "model", model[1], model[2] or model[3]
    return None


def resolve_start(recipe: Recipe, layout: RunLayout) -> Recipe:
    """The recipe to train and evaluate with: a registry reference in ``model.init_from`` (an SFT champion,
    say) downloaded into ``<run>/start`` and named in ``<run>/parent.json``; other recipes unchanged.

    Raises:
        ValueError: the reference names no version, or a model of another kind (a classifier for a
            generative task), or a prompt-learning adapter (virtual tokens cannot seed new weights).
    """
    from mlflow.exceptions import MlflowException

    from tunery.layout import MODEL_META

    reference = start_reference(recipe.model.init_from)
    if reference is None:
        return recipe
    kind, name, which = reference
    parent = json.loads(layout.parent.read_text(encoding="utf-8")) if layout.parent.exists() else None
    if parent is None or parent.get("reference") != recipe.model.init_from or not layout.start_dir.is_dir():
        mlf = client(recipe)
        try:
            if kind == "run":
                run_id, version, uri = name, None, f"runs:/{name}/model"
                mlf.get_run(run_id)
            else:
                mv = (
                    mlf.get_model_version(name, which)
                    if which.isdigit()
                    else mlf.get_model_version_by_alias(name, which)
                )
                run_id, version, uri = mv.run_id, str(mv.version), f"models:/{name}/{mv.version}"
        except MlflowException as exc:
            raise ValueError(
                f"model.init_from {recipe.model.init_from}: no such model ({exc.message})"
            ) from None
        download_model_dir(recipe, version or "", layout.start_dir, uri=uri)
        parent = {
            "reference": recipe.model.init_from,
            "model": name if kind == "model" else None,
            "version": version,
            "run_id": run_id,
        }
        layout.parent.write_text(json.dumps(parent, indent=2), encoding="utf-8")
    meta = json.loads((layout.start_dir / MODEL_META).read_text(encoding="utf-8"))
    generative = ("sft", "preference")
    if (meta.get("task") in generative) != (recipe.task in generative):
        raise ValueError(
            f"model.init_from {recipe.model.init_from} is a {meta.get('task')} model: it cannot start a "
            f"{recipe.task} run"
        )
    if meta.get("export_format") == "adapter":
        raise ValueError(
            f"model.init_from {recipe.model.init_from} is a {meta.get('method')} adapter: its virtual tokens "
            "cannot seed new weights (start from its base, or from a LoRA/full model)"
        )
    start = str(layout.start_dir)
    return recipe.model_copy(update={"model": recipe.model.model_copy(update={"init_from": start})})


def _parent_tags(layout: RunLayout) -> dict[str, str]:
    """The registered version the model was trained from (``model.init_from``), as version tags."""
    if not layout.parent.exists():
        return {}
    parent = json.loads(layout.parent.read_text(encoding="utf-8"))
    named = f"{parent['model']} version {parent['version']}" if parent.get("model") else "a run's model"
    tags = {
        "tunery.parent": f"{named} (run {parent['run_id']})",
        "tunery.parent.reference": parent["reference"],
        "tunery.parent.run_id": parent["run_id"],
    }
    if parent.get("model"):
        tags.update({"tunery.parent.model": parent["model"], "tunery.parent.version": parent["version"]})
    return tags
