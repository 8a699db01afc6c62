"""tunery.pipeline.run: the whole pipeline without Prefect, on real data, registering a model like the flow.

The run happens in a subprocess so that the check "Prefect was never imported" covers everything the run
touched (this test session imports Prefect elsewhere).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tunery.layout import MODEL_META, SPLITS, RunLayout

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from tunery import pipeline
    from tunery.config import load_recipe, resolve_paths

    import mlflow
    seen = []
    recipe = resolve_paths(load_recipe(sys.argv[1]), Path.cwd())
    # a notebook that set another experiment of the same store before: registering must not trip on it
    Path(recipe.workdir).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{recipe.workdir}/mlflow.db")
    mlflow.set_experiment("a-notebook-experiment")
    result = pipeline.run(recipe, progress=lambda stage, message: seen.append(stage))
    prefect = sorted(m for m in sys.modules if m.split(".")[0] == "prefect")
    print("RESULT " + json.dumps({
        "stages": seen, "prefect": prefect, "run_dir": str(result.run_dir), "run_id": result.run_id,
        "alias": result.registration.alias, "version": result.registration.version,
        "model_uri": result.model_uri, "macro_f1": result.metrics["model"]["macro_f1"],
    }))
    """
)


@pytest.fixture(scope="module")
def pipeline_run(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    full = pd.read_csv(
        shared_data / "sms_spam" / "SMSSpamCollection", sep="\t", dtype=str, keep_default_na=False
    )
    full.groupby("Label").sample(n=200, random_state=1).to_csv(folder / "sms.tsv", sep="\t", index=False)
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: sms-plain
            data:
              source: {folder / "sms.tsv"}
              text_columns: [SMS]
              label_column: Label
              labels: [ham, spam]
            model: {{base: minilm, max_length: 64}}
            training: {{epochs: 1, batch_size: 16, learning_rate: 1.0e-4}}
            evaluation: {{gate: {{baseline_floor: false}}}}
            cost: {{cpu_hour: 0.36, currency: EUR}}
            mlflow: {{experiment: sms-plain, registered_model: sms-plain}}
            workdir: {folder / "work"}
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(recipe)], capture_output=True, text=True, cwd=folder, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return {**json.loads(line.removeprefix("RESULT ")), "db": folder / "work" / "mlflow.db"}


def test_pipeline_runs_every_stage_in_order_without_prefect(pipeline_run):
    assert pipeline_run["prefect"] == []
    stages = list(dict.fromkeys(pipeline_run["stages"]))  # evaluate reports several steps
    assert stages == ["open", "ingest", "clean", "split", "train", "evaluate", "register", "close"]


def test_pipeline_registers_a_champion_like_the_flow(pipeline_run):
    """Even though the calling process had made another experiment of the same store the active one."""
    assert pipeline_run["alias"] == "champion" and pipeline_run["version"] == "1"
    assert pipeline_run["model_uri"] == "models:/sms-plain@champion"
    mlflow.set_tracking_uri(f"sqlite:///{pipeline_run['db']}")
    try:
        mlf = mlflow.MlflowClient()
        run = mlf.get_run(pipeline_run["run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test_macro_f1"] == pytest.approx(pipeline_run["macro_f1"])
        assert run.data.metrics["test_macro_f1"] > run.data.metrics["baseline_majority_macro_f1"]
        assert str(mlf.get_model_version_by_alias("sms-plain", "champion").version) == "1"
        tags = mlf.get_model_version("sms-plain", "1").tags
        assert tags["tunery.gate.decision"] == "champion"
        model = mlflow.pyfunc.load_model("models:/sms-plain@champion")
        signature = model.metadata.signature
        assert signature.inputs.input_names() == ["text"]
        assert signature.outputs.input_names() == ["label", "prob_ham", "prob_spam", "error"]
        out = model.predict(pd.DataFrame({"text": ["WINNER!! Claim your FREE prize now, call 09061701461"]}))
        assert list(out.columns) == ["label", "prob_ham", "prob_spam", "error"]
    finally:
        mlflow.set_tracking_uri(None)


def test_every_stage_and_the_training_process_are_costed_in_mlflow(pipeline_run):
    from tunery.ops import usage

    records = usage.read(RunLayout(Path(pipeline_run["run_dir"])).usage)
    stages = {r["stage"] for r in records if r["process"] == "orchestrator"}
    assert stages == {"open", "ingest", "clean", "split", "publish-data", "train", "evaluate", "register"}
    (rank0,) = [r for r in records if r["process"] == "rank0"]
    assert rank0["stage"] == "train" and rank0["pid"] != records[0]["pid"]  # the training job's own process
    assert rank0["cpu_s"] > 1.0 and rank0["peak_rss_mb"] > 100  # it loaded and trained MiniLM
    (train,) = [r for r in records if r["stage"] == "train" and r["process"] == "orchestrator"]
    assert train["wall_s"] >= rank0["wall_s"]  # the job ran inside the stage
    cpu = sum(r["cpu_s"] for r in records)
    mlflow.set_tracking_uri(f"sqlite:///{pipeline_run['db']}")
    try:
        mlf = mlflow.MlflowClient()
        logged = mlf.get_run(pipeline_run["run_id"]).data.metrics
        assert logged["cost_cpu_s"] == pytest.approx(cpu, abs=1e-6)
        assert logged["cost_train_cpu_s"] >= rank0["cpu_s"] and logged["cost_gpu_s"] == 0.0
        assert logged["cost_money"] == pytest.approx(cpu / 3600 * 0.36)  # the recipe's rate per CPU-hour
        assert logged["cost_energy_kwh"] == pytest.approx(cpu * 10.0 / 3.6e6)  # 10 W per busy CPU
        assert logged["cost_peak_rss_mb"] >= rank0["peak_rss_mb"]
        tags = mlf.get_model_version("sms-plain", "1").tags
        money, currency = tags["tunery.cost.money"].split()
        assert float(money) == pytest.approx(cpu / 3600 * 0.36, abs=1e-6) and currency == "EUR"
        assert tags["tunery.cost"].startswith("wall ") and tags["tunery.cost"].endswith(" EUR")
        saved = mlflow.artifacts.load_dict(f"runs:/{pipeline_run['run_id']}/cost.json")
        assert set(saved["stages"]) == stages and saved["currency"] == "EUR"
    finally:
        mlflow.set_tracking_uri(None)


def test_pipeline_leaves_the_run_folder_a_flow_run_leaves(pipeline_run):
    layout = RunLayout(Path(pipeline_run["run_dir"]))
    report = json.loads(layout.data_report.read_text())
    clean = report["clean"]
    assert clean["rows_in"] == clean["kept"] + clean["quarantined"] + clean["deduplicated"] == 400
    for path in (layout.quarantine, *(layout.split(s) for s in SPLITS), layout.metrics):
        assert path.is_file(), path
    assert (layout.model_dir / MODEL_META).is_file()
