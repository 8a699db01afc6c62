"""The ``tunery`` command line: validate a recipe, run the finetune flow.

The library never imports Prefect; ``tunery run`` imports the flow lazily, inside the command, so that
``tunery validate`` and every library module stay free of the orchestrator.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from tunery.config import Recipe, RecipeError, load_recipe, resolve_paths

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="tunery: a fine-tuning factory on Prefect."
)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="Dotted overrides, e.g. training.epochs=1 method.name=lora.")
]


def _fail(message: str) -> None:
    from tunery.tracking import redact  # no password in an error line (docs/security.md)

    typer.secho(f"error: {redact(message)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _checked_recipe(recipe_path: Path, overrides: list[str]) -> Recipe:
    """Load and validate a recipe and check that its data source exists; exit cleanly if not."""
    from tunery.data.ingest import DataError, expand_source
    from tunery.data.preflight import check_recipe
    from tunery.models import ModelError
    from tunery.training.methods import MethodUnavailable, check_supported

    try:
        recipe = resolve_paths(load_recipe(recipe_path, overrides), Path.cwd())
        files = expand_source(recipe.data.source)
        check_recipe(recipe, files)  # the base model's config; each file's columns and first labels
        check_supported(recipe)  # e.g. qlora or fp16 without a CUDA GPU
    except (RecipeError, DataError, ModelError, MethodUnavailable) as exc:
        _fail(str(exc))
    typer.echo(
        f"recipe {recipe_path}: ok ({recipe.task}, {recipe.model.base}, {recipe.method.name}; "
        f"{len(files)} data file(s))"
    )
    return recipe


@app.command()
def validate(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Check a recipe (fields, values, data source) without running anything."""
    _checked_recipe(recipe, overrides or [])


@app.command("recipe")
def recipe_reference(
    schema: Annotated[bool, typer.Option("--schema", help="Print the JSON schema (for editors).")] = False,
    example: Annotated[
        str | None, typer.Option(metavar="TASK", help="Print a starting recipe: classification, sft or chat.")
    ] = None,
) -> None:
    """Print the recipe format: every field with its type, default and meaning (also docs/recipe.md)."""
    import json

    from tunery import reference

    if schema and example is not None:
        _fail("give --schema or --example, not both")
    if schema:
        typer.echo(json.dumps(reference.json_schema(), indent=2))
        return
    try:
        text = reference.reference_markdown() if example is None else reference.example_recipe(example)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(text, nl=False)


def _prepare_environment(recipe: Recipe) -> None:
    """Project-local Prefect home and quiet telemetry, unless the user configured otherwise."""
    os.environ.setdefault("PREFECT_HOME", str(Path(recipe.workdir) / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect does not create parents
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Prefect's default is 20 s; the temporary server took 19 s to answer on this 2-core machine under load
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # progress bars of model loading and artifact downloads: stage lines say what happens
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _print_result(result: dict, recipe: Recipe, elapsed: float) -> None:
    from tunery.tracking import redact, tracking_uri

    typer.secho(
        f"\nregistered model {result['model_name']} version {result['version']} "
        f"-> alias '{result['alias']}' ({result['reason']})",
        fg=typer.colors.GREEN,
        bold=True,
    )
    typer.echo(f"model URI: {result['model_uri']}")
    typer.echo("test metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in result["test_metrics"].items()))
    typer.echo(f"elapsed: {elapsed:.0f} s")
    uri = redact(tracking_uri(recipe))  # credentials are never shown (docs/security.md)
    if uri.startswith(("http://", "https://")):
        typer.echo(f"open the results: {uri}")
    else:
        typer.echo(f"open the results: mlflow ui --backend-store-uri {uri} --port 5000")


def explained(exc: BaseException) -> str:
    """The one error line of a failed run, with the fix where tunery knows it."""
    from tunery.ops.console import error_line

    if "Timed out while attempting to connect to ephemeral Prefect API server" in str(exc):
        seconds = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20")
        return (
            f"the temporary Prefect server did not answer within {seconds} s (a busy machine?): raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or start a server (tunery stack up) and set "
            "PREFECT_API_URL"
        )
    return error_line(exc)


VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Show the full library logs (Prefect, MLflow, transformers) and tracebacks."
    ),
]


@app.command()
def run(recipe: RecipeArg, overrides: OverridesArg = None, verbose: VerboseOpt = False) -> None:
    """Run the finetune flow (ephemeral Prefect, or the server in PREFECT_API_URL).

    Shows one line per stage and a training bar; the full log goes to <workdir>/logs/ (--verbose: here).
    """
    _run_flow("finetune", recipe, overrides or [], verbose)


@app.command()
def search(recipe: RecipeArg, overrides: OverridesArg = None, verbose: VerboseOpt = False) -> None:
    """Run the recipe's hyperparameter search (its `search:` section), then evaluate, gate and register the
    best trial's model. Run it again to resume the same study (after a crash, or with more trials)."""
    overrides = overrides or []
    try:
        checked = resolve_paths(load_recipe(recipe, overrides), Path.cwd())
    except RecipeError as exc:
        _fail(str(exc))
    if checked.search is None:
        _fail(f"recipe {recipe} has no `search` section: add one (docs/search.md) or use `tunery run`")
    _run_flow("hyperparameter-search", recipe, overrides, verbose)


def _flow(name: str):
    """The flow function by name; imported lazily: Prefect stays out of the library and of `validate`."""
    if name == "finetune":
        from flows.finetune import finetune

        return finetune
    from flows.search import hyperparameter_search

    return hyperparameter_search


def _run_flow(name: str, recipe: Path, overrides: list[str], verbose: bool) -> None:
    import traceback

    from tunery.ops.console import RunConsole, disk_problem
    from tunery.ops.guard import exit_on_termination, guard_descendants

    exit_on_termination()  # kill PID: the same orderly stop as Ctrl+C
    guard_descendants()  # SIGKILL: the temporary Prefect server and the training job end with this process
    checked = _checked_recipe(recipe, overrides)
    _prepare_environment(checked)
    started = time.perf_counter()
    console = RunConsole(checked.workdir, checked.name, verbose)
    failure = None
    with console:
        flow = _flow(name)
        console.attach()
        try:
            result = flow(recipe_path=str(recipe), overrides=overrides)
        except KeyboardInterrupt:
            failure = "interrupted"
        except Exception as exc:  # Prefect logged the traceback (the log file, or here with --verbose)
            cause = disk_problem(exc, [checked.workdir, os.environ["PREFECT_HOME"]])
            failure = f"the {name} flow failed: {cause or explained(exc)}"
            if console.log is not None:
                traceback.print_exc()  # into the log file, next to Prefect's record of it
    if failure:
        if console.log is not None:
            typer.echo(f"full log: {console.log}", err=True)
        _fail(failure)
    _print_result(result, checked, time.perf_counter() - started)
    if console.log is not None:
        typer.echo(f"full log: {console.log}")


ModelArg = Annotated[str, typer.Argument(help="NAME@alias (default alias: champion), NAME/version or a URI.")]
TrackingOpt = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else .tunery/mlflow.db)."),
]


@app.command()
def serve(
    model: ModelArg,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the REST API (/ping, /invocations).")] = 5001,
    workers: Annotated[int, typer.Option(help="Scoring-server worker processes.")] = 1,
    tracking_uri: TrackingOpt = None,
    max_request_bytes: Annotated[
        int, typer.Option(min=1, help="Largest request body in bytes; a larger one gets 413.")
    ] = 10 * 1024 * 1024,
    max_rows: Annotated[int, typer.Option(min=1, help="Most rows per request; more get 413.")] = 10_000,
    request_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a request may take; then 504 and its work stops.")
    ] = 60.0,
    openai: Annotated[
        bool, typer.Option("--openai", help="sft models: an OpenAI-compatible /v1/chat/completions API.")
    ] = False,
) -> None:
    """Serve a registered model over REST with MLflow's scoring server (runs until interrupted).

    Same endpoints and formats as `mlflow models serve`. Work stops when its client disconnects or its
    --request-timeout passes; a null or empty text gets label null and error `empty_text` in its row.
    With --openai, an sft model answers OpenAI chat completions (streaming too) at /v1 instead.
    """
    import subprocess

    from tunery.ops.guard import exit_on_termination, guard_descendants
    from tunery.ops.process import stop_group
    from tunery.serving import scoring

    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri or scoring.default_tracking_uri())
    # MLflow starts `uvicorn` by name: make this environment's scripts findable even when the venv is not
    # activated (e.g. .venv/bin/tunery called directly).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if openai:
        cmd = [sys.executable, "-m", "tunery.serving.chat_api", model, "--host", host, "--port", str(port)]
        cmd += ["--max-request-bytes", str(max_request_bytes)]
        typer.echo(f"serving {scoring.model_uri(model)} on http://{host}:{port}/v1 (Ctrl+C stops)")
    else:
        cmd = scoring.serve_command(model, host, port, workers, max_request_bytes, max_rows, request_timeout)
        typer.echo(f"serving {scoring.model_uri(model)} on http://{host}:{port}/invocations (Ctrl+C stops)")
    exit_on_termination()
    guard_descendants()  # SIGKILL of this process ends the server and its workers too
    # its own process group: a stop reaches the server (tunery.serving.server) and every uvicorn worker
    server = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        raise typer.Exit(server.wait())
    except KeyboardInterrupt:
        stop_group(server)
        raise typer.Exit(130) from None


@app.command()
def score(
    model: ModelArg,
    input_path: Annotated[Path, typer.Argument(help="Rows to score (CSV/TSV/JSON/JSONL/Parquet).")],
    output_path: Annotated[Path, typer.Argument(help="Output file; .csv, .tsv, .jsonl or .parquet.")],
    tracking_uri: TrackingOpt = None,
) -> None:
    """Score a file with a registered model through the batch-score flow."""
    if not input_path.is_file():
        _fail(f"input file not found: {input_path}")
    os.environ.setdefault("PREFECT_HOME", str(Path(".tunery") / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.score import batch_score  # lazy: Prefect stays out of the library

    try:
        out = batch_score(
            model=model, input_path=str(input_path), output_path=str(output_path), tracking_uri=tracking_uri
        )
    except Exception as exc:
        _fail(f"scoring failed: {type(exc).__name__}: {exc}")
    typer.secho(f"wrote {out}", fg=typer.colors.GREEN)


@app.command()
def lineage(model: ModelArg, tracking_uri: TrackingOpt = None) -> None:
    """Print where a registered model version (NAME@ALIAS or NAME@VERSION) comes from: the registered model
    it started from (model.init_from) and the data drops it was trained on (continuous learning)."""
    from tunery.continual.lineage import LineageError, lineage_text
    from tunery.continual.lineage import lineage as read_lineage
    from tunery.serving import scoring

    try:
        info = read_lineage(model, tracking_uri or scoring.default_tracking_uri())
    except LineageError as exc:
        _fail(str(exc))
    from tunery.tracking import redact

    typer.echo(redact(lineage_text(info)))


@app.command()
def continuous(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Scan the recipe's drop zone once and retrain on new drops (ephemeral Prefect, or PREFECT_API_URL).

    On a Prefect server, the ``watch-drops`` and ``continuous-learning`` deployments do this on their own.
    """
    overrides = overrides or []
    checked = _checked_recipe(recipe, overrides)
    if checked.continuous is None:
        _fail(f"recipe {recipe} has no `continuous` section")
    _prepare_environment(checked)
    from flows.continuous import continuous_learning, watch_drops  # lazy: Prefect stays out of the library

    try:
        found = watch_drops(recipe_path=str(recipe), overrides=overrides)
        typer.echo(
            f"drop zone: {len(found['new'])} new drop(s), {len(found['duplicates'])} already seen content"
        )
        result = continuous_learning(recipe_path=str(recipe), overrides=overrides)
    except Exception as exc:
        _fail(f"continuous learning failed: {type(exc).__name__}: {exc}")
    if result["status"] == "up to date":
        typer.echo(f"dataset version {result['version']}: up to date, nothing to train")
        return
    _print_result(result, checked, 0.0)


drops_app = typer.Typer(no_args_is_help=True, help="The drop-zone manifest of a continuous-learning recipe.")
app.add_typer(drops_app, name="drops")


@drops_app.command("list")
def drops_list(recipe: RecipeArg) -> None:
    """List every drop of the recipe's zone (id, status, dataset version, name, detail), then every zone
    entry refused unread (a symlink, FIFO, ...: status rejected, no id); names are shown escaped."""
    from tunery.continual.drops import Manifest, shown

    manifest = Manifest.of(resolve_paths(load_recipe(recipe), Path.cwd()))
    for d in manifest.drops():
        version = "" if d.version is None else f"v{d.version}"
        typer.echo(
            f"{d.id}  {d.status:<9} {version:<6} {d.arrived_at}  {shown(d.name)}  {shown(d.detail)}".rstrip()
        )
    for r in manifest.rejects():
        typer.echo(
            f"{'-':<16}  {'rejected':<9} {'':<6} {r.seen_at}  {shown(r.name)}  {r.reason}: {shown(r.detail)}"
        )


@drops_app.command("requeue")
def drops_requeue(recipe: RecipeArg, drop_id: Annotated[str, typer.Argument(help="Drop id.")]) -> None:
    """Put a failed, rejected or held drop back in line for the next retrain."""
    from tunery.continual.drops import Manifest, shown

    checked = resolve_paths(load_recipe(recipe), Path.cwd())
    try:
        drop = Manifest.of(checked).requeue(drop_id)
    except (KeyError, ValueError) as exc:
        _fail(shown(str(exc).strip("'\"")))
    typer.echo(f"drop {drop.id} ({shown(drop.name)}) is pending again")


stack_app = typer.Typer(no_args_is_help=True, help="A local Prefect + MLflow stack on 127.0.0.1.")
app.add_typer(stack_app, name="stack")
StackDirOpt = Annotated[Path, typer.Option(help="Where the stack keeps its state, databases and logs.")]
DEFAULT_STACK_DIR = Path(".tunery") / "stack"


@stack_app.command("up")
def stack_up(
    root: StackDirOpt = DEFAULT_STACK_DIR,
    postgres: Annotated[
        bool, typer.Option(help="PostgreSQL as MLflow's backend store (default SQLite).")
    ] = False,
    prefect_port: Annotated[int, typer.Option(help="Prefect server port (UI and API).")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow server port.")] = 5000,
    pool: Annotated[str, typer.Option(help="Process work pool the worker serves.")] = "tunery-local",
    deploy: Annotated[bool, typer.Option(help="Deploy every deployment of prefect.yaml.")] = True,
) -> None:
    """Start MLflow, a Prefect server and a worker (and PostgreSQL with --postgres); deploy; print the UIs."""
    from tunery.ops import stack

    try:
        state = stack.up(
            root.resolve(),
            Path.cwd(),
            postgres=postgres,
            prefect_port=prefect_port,
            mlflow_port=mlflow_port,
            pool=pool,
            deploy=deploy,
        )
    except stack.StackError as exc:
        _fail(str(exc))
    for service in state["services"]:
        typer.echo(f"{service['name']:<9} pid {service['pid']:<8} log {service['log']}")
    typer.secho(f"Prefect UI: {state['prefect_url']}", fg=typer.colors.GREEN, bold=True)
    typer.secho(f"MLflow UI:  {state['mlflow_url']}", fg=typer.colors.GREEN, bold=True)
    typer.echo(
        f"use it: export PREFECT_API_URL={state['prefect_api_url']} MLFLOW_TRACKING_URI={state['mlflow_url']}"
    )
    typer.echo("stop it: tunery stack down")


@stack_app.command("down")
def stack_down(root: StackDirOpt = DEFAULT_STACK_DIR) -> None:
    """Stop the stack's processes: workers, then the Prefect server, MLflow, PostgreSQL."""
    from tunery.ops import stack

    stopped = stack.down(root.resolve())
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@stack_app.command("status")
def stack_status(root: StackDirOpt = DEFAULT_STACK_DIR) -> None:
    """Show the stack's processes and whether each is running (exit 1 if any is not)."""
    from tunery.ops import stack

    found = stack.status(root.resolve())
    if not found:
        typer.echo("no stack recorded")
        raise typer.Exit(1)
    for service, alive in found:
        where = f" {service.url}" if service.url else ""
        typer.echo(f"{service.name:<9} pid {service.pid:<8} {'running' if alive else 'STOPPED'}{where}")
    if not all(alive for _, alive in found):
        raise typer.Exit(1)


def main() -> None:
    from tunery.ops.cpus import fit_openmp_to_quota

    fit_openmp_to_quota()  # a container's CPU limit, not the host's CPU count, sizes torch's threads
    app(prog_name="tunery")


if __name__ == "__main__":
    sys.exit(main())
