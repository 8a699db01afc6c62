"""The local stack, for real: `tunery stack up` starts a Prefect server, an MLflow server and a process
worker on 127.0.0.1 and deploys prefect.yaml; runs are then started the way the Prefect UI starts them
(``POST /api/deployments/{id}/create_flow_run`` with edited parameters) and by the Prefect scheduler.
`tunery stack down` stops everything by PID at the end.

Runs use the demo recipe with small overrides (a tiny BERT, few steps, a temporary workdir) to stay cheap.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, SHARED_DATA, read_sms_spam
from tunery.ops import process, stack

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _tunery(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunery.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    # faster loops than production defaults, so that the scheduler and the worker react within seconds
    env.update(
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
    )
    ports = [str(process.free_port()), str(process.free_port())]
    up = _tunery(
        "stack", "up", "--root", str(root), "--prefect-port", ports[0], "--mlflow-port", ports[1], env=env
    )
    state = stack.load_state(root)
    try:  # from here on, whatever fails, `down` stops what `up` started
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"Prefect UI: http://127.0.0.1:{ports[0]}" in up.stdout
        assert f"MLflow UI:  http://127.0.0.1:{ports[1]}" in up.stdout
        yield {**state, "root": root, "env": env}
    finally:
        down = _tunery("stack", "down", "--root", str(root), env=env)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "stopped: worker, prefect, mlflow" in down.stdout  # dependants first
        for service in state["services"]:
            with pytest.raises(ProcessLookupError):
                os.kill(service["pid"], 0)


class _RetryBusy(httpx.HTTPTransport):
    """Retry 503/429 like Prefect's own client does: a SQLite-backed server answers 503 while the
    database is locked by a burst of writes (two flow runs, the worker, the scheduler on 2 cores). A read
    (GET, or a POST to a ``/filter`` query) that times out is retried too: on CI the server once stalled
    past the 30 s read timeout while the other test worker's training job held both cores. Writes are never
    repeated (an event or a flow run must not be sent twice)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        read_only = request.method == "GET" or request.url.path.endswith("/filter")
        for attempt in range(8):
            try:
                response = super().handle_request(request)
            except httpx.TimeoutException:
                if not read_only or attempt == 7:
                    raise
                time.sleep(min(2**attempt, 10))
                continue
            if response.status_code not in (429, 503) or attempt == 7:
                return response
            response.close()
            time.sleep(min(2**attempt, 10))
        raise AssertionError("unreachable")


def _api(state: dict) -> httpx.Client:
    return httpx.Client(base_url=state["prefect_api_url"], timeout=30, transport=_RetryBusy())


def _deployment_id(api: httpx.Client, flow: str, name: str) -> str:
    reply = api.get(f"/deployments/name/{flow}/{name}")
    reply.raise_for_status()
    return reply.json()["id"]


def _wait_final(api: httpx.Client, run_ids: list[str], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    runs: dict[str, dict] = {}
    while time.monotonic() < deadline:
        replies = {rid: api.get(f"/flow_runs/{rid}") for rid in run_ids}
        for rid, reply in replies.items():
            assert reply.status_code == 200, f"flow run {rid}: HTTP {reply.status_code} {reply.text[:200]}"
        runs = {rid: reply.json() for rid, reply in replies.items()}
        if all(r["state"]["type"] in FINAL for r in runs.values()):
            return runs
        time.sleep(2)
    states = {rid: r["state"]["type"] for rid, r in runs.items()}
    raise AssertionError(f"flow runs not finished in {timeout:.0f} s: {states}")


def _logs(api: httpx.Client, run_id: str) -> list[dict]:
    found, offset = [], 0
    while True:
        body = {
            "logs": {"flow_run_id": {"any_": [run_id]}},
            "sort": "TIMESTAMP_ASC",
            "limit": 200,
            "offset": offset,
        }
        page = api.post("/logs/filter", json=body).json()
        found += page
        if len(page) < 200:
            return found
        offset += 200


def _parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _runs_of(api: httpx.Client, deployment: str) -> list[dict]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment]}}, "sort": "EXPECTED_START_TIME_ASC"}
    return api.post("/flow_runs/filter", json=body).json()


def _schedule_nightly_soon(api: httpx.Client, overrides: list[str]) -> dict:
    """prefect.yaml's nightly cron was deployed and planned at 02:00 UTC: record that, switch it off (this
    test must not run it), and add an hourly schedule anchored 10 s from now with ``overrides``."""
    deployment = _deployment_id(api, "finetune", "nightly-retrain")
    schedules = api.get(f"/deployments/{deployment}/schedules").json()
    deadline, nightly = time.monotonic() + 60, []
    while not nightly and time.monotonic() < deadline:  # the scheduler's loop: every 5 s here
        nightly = [r for r in _runs_of(api, deployment) if r["auto_scheduled"]]
        time.sleep(0 if nightly else 1)
    found = {
        "deployment": deployment,
        "crons": [x["schedule"].get("cron") for x in schedules],
        "nightly_hours": [_parse(r["expected_start_time"]).hour for r in nightly],
    }
    reply = api.patch(f"/deployments/{deployment}/schedules/{schedules[0]['id']}", json={"active": False})
    assert reply.status_code == 204, reply.text
    for run in nightly:
        api.delete(f"/flow_runs/{run['id']}")
    anchor = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)
    schedule = {
        "schedule": {"interval": 3600, "anchor_date": anchor.isoformat(), "timezone": "UTC"},
        "active": True,
        "parameters": {"recipe_path": "configs/helpdesk.yaml", "overrides": overrides},
    }
    reply = api.post(f"/deployments/{deployment}/schedules", json=[schedule])
    assert reply.status_code == 201, reply.text
    return {**found, "anchor": anchor}


def _scheduled_run(api: httpx.Client, deployment: str, marker: str, timeout: float = 120) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _runs_of(api, deployment)
        scheduled = [r for r in found if r["auto_scheduled"] and marker in str(r["parameters"])]
        if scheduled:
            return scheduled[0]
        time.sleep(2)
    return None


@pytest.fixture(scope="module")
def stack_runs(live_stack, tiny_bert, tmp_path_factory):
    """Four runs of the demo recipe on the stack at once, each with edited parameters: one submitted in
    headless Chromium through the UI's Custom run form, two through the API call that form makes
    (``create_flow_run``), one created by the Prefect scheduler. They share the one training slot.

    The tiny BERT (instead of MiniLM) keeps each run cheap: what is under test here is the stack."""
    workdir = tmp_path_factory.mktemp("stack-runs")
    # a tiny random model: these runs test the stack, not the baseline floor (test_held_out_pipeline.py)
    base = f"model.base={tiny_bert}"
    floor_off = "evaluation.gate.baseline_floor=false"
    ui_overrides = [
        floor_off,
        "training.max_steps=4",
        "training.logging_steps=1",  # a training curve with a point per step, validated twice
        "training.eval_steps=2",
        base,
        f"workdir={workdir / 'ui'}",
        "mlflow.registered_model=helpdesk-ui",
    ]
    cron_workdir = workdir / "scheduled"
    with _api(live_stack) as api:
        cron_overrides = [f"workdir={cron_workdir}", "mlflow.registered_model=helpdesk-cron"]
        cron = _schedule_nightly_soon(api, ["training.max_steps=2", base, floor_off, *cron_overrides])
        ui_id = _submit_in_ui(live_stack, ui_overrides, workdir)
        deployment = _deployment_id(api, "finetune", "finetune")
        api_ids = []
        for k in range(2):
            parameters = {
                "recipe_path": "configs/helpdesk.yaml",
                "overrides": [
                    "training.max_steps=6",
                    base,
                    floor_off,
                    f"workdir={workdir / f'run{k}'}",
                    "mlflow.registered_model=helpdesk-stack",
                ],
            }
            reply = api.post(f"/deployments/{deployment}/create_flow_run", json={"parameters": parameters})
            assert reply.status_code == 201, reply.text
            api_ids.append(reply.json()["id"])
        scheduled = _scheduled_run(api, cron["deployment"], str(cron_workdir))
        ids = [ui_id, *api_ids] + ([scheduled["id"]] if scheduled else [])
        try:
            runs = _wait_final(api, ids, timeout=900)
        finally:  # no further occurrences (pausing deletes the planned runs: only once ours has finished)
            api.patch(f"/deployments/{cron['deployment']}", json={"paused": True})
        logs = {rid: _logs(api, rid) for rid in ids}
    return {
        "ui": ui_id,
        "ui_overrides": ui_overrides,
        "ui_workdir": workdir / "ui",
        "api": api_ids,
        "cron": cron,
        "scheduled": scheduled,
        "runs": runs,
        "logs": logs,
    }


def test_ui_style_runs_complete_and_register_versions_in_mlflow(live_stack, stack_runs):
    import mlflow

    for rid in stack_runs["api"]:
        run = stack_runs["runs"][rid]
        messages = "\n".join(log["message"] for log in stack_runs["logs"][rid])
        assert run["state"]["type"] == "COMPLETED", messages[-3000:]
        assert run["parameters"]["overrides"][0] == "training.max_steps=6"
        assert "trained 6 steps" in messages, "training logs reach the Prefect UI, with the override applied"
    mlf = mlflow.MlflowClient(live_stack["mlflow_url"])
    versions = mlf.search_model_versions("name = 'helpdesk-stack'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    run = mlf.get_run(versions[0].run_id)
    assert run.data.params["training.max_steps"] == "6"
    assert mlf.get_model_version_by_alias("helpdesk-stack", "champion") is not None


def test_runs_wait_for_the_training_slot(stack_runs):
    """One training job at a time: the four runs' training windows (slot held -> trained) do not overlap."""
    windows = []
    assert len(stack_runs["logs"]) == 4
    for logs in stack_runs["logs"].values():
        held = [_parse(x["timestamp"]) for x in logs if "holding training slot" in x["message"]]
        done = [_parse(x["timestamp"]) for x in logs if x["message"].startswith("trained ")]
        waited = [x for x in logs if "waiting for training slot" in x["message"]]
        assert held and done and waited, [x["message"] for x in logs][-20:]
        windows.append((held[0], done[-1]))
    windows.sort()
    for earlier, later in zip(windows, windows[1:], strict=False):
        assert earlier[1] <= later[0], f"training windows overlap: {windows}"


def test_scheduler_creates_a_run_that_the_worker_executes(stack_runs):
    cron, scheduled = stack_runs["cron"], stack_runs["scheduled"]
    # prefect.yaml's nightly cron was deployed and the scheduler planned its runs at 02:00 UTC
    assert cron["crons"] == ["0 2 * * *"]
    assert cron["nightly_hours"] and all(hour == 2 for hour in cron["nightly_hours"])
    assert scheduled, "the scheduler created no run in 120 s from the schedule added to nightly-retrain"
    assert abs((_parse(scheduled["expected_start_time"]) - cron["anchor"]).total_seconds()) < 1
    final = stack_runs["runs"][scheduled["id"]]
    assert final["state"]["type"] == "COMPLETED"
    assert final["work_queue_name"] == "default" and final["infrastructure_pid"]


def test_stack_status_reports_every_service_running(live_stack):
    status = _tunery("stack", "status", "--root", str(live_stack["root"]), env=live_stack["env"])
    assert status.returncode == 0, status.stdout + status.stderr
    for name in ("mlflow", "prefect", "worker"):
        assert name in status.stdout
    assert "STOPPED" not in status.stdout


def test_stack_up_refuses_a_second_stack_on_the_same_folder(live_stack):
    again = _tunery("stack", "up", "--root", str(live_stack["root"]), env=live_stack["env"], timeout=60)
    assert again.returncode == 2
    assert "already running" in again.stderr


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",  # this machine refuses outside connections: don't try any
    "--disable-component-update",
]
DOCS = REPO / "docs"


def _browser(playwright):
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed (Debian: apt-get install chromium; `make test` installs it)"
    return playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)


def _keep_screenshot(path: Path) -> None:
    """Screenshots for the README are refreshed with TUNERY_UPDATE_SCREENSHOTS=1 (docs/ is in git)."""
    import shutil

    if os.environ.get("TUNERY_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copy(path, DOCS / path.name)


# The plots of the finished run's summary artifact (tunery.evaluation.artifacts), by their alt text: the
# evaluation's four, then one per sensitivity slice (length bucket, label, source file, perturbation).
SUMMARY_PLOTS = {"Confusion matrix", "ROC curves", "Reliability diagram", "Training curves"} | {
    "Length",
    "Label",
    "Source",
    "Perturbation",
}
# Scroll an element to the top of the page's scrolling pane (not the document: the UI scrolls a pane).
SCROLL_TO_TOP = """e => {
    e.scrollIntoView({block: 'start'});
    for (let p = e.parentElement; p; p = p.parentElement) {
        if (p.scrollHeight > p.clientHeight && getComputedStyle(p).overflowY !== 'visible') {
            p.scrollTop -= 16;
            return;
        }
    }
}"""


def _open_artifact(page, prefect_ui: str, run_id: str, key: str) -> list[dict]:
    """Flow run page -> Artifacts tab -> the artifact's card; wait until every image of its markdown has
    loaded (or failed), and return each image's alt text, source kind and natural size."""
    page.goto(f"{prefect_ui}/runs/flow-run/{run_id}", wait_until="networkidle")
    page.locator(".p-tab", has_text="Artifacts").first.click()
    page.get_by_text(key, exact=True).first.click()
    page.wait_for_url("**/artifacts/artifact/**")
    page.locator(".artifact-data-markdown img").first.wait_for(timeout=30_000)
    page.wait_for_function(
        "[...document.querySelectorAll('.artifact-data-markdown img')].every(i => i.complete)"
    )
    return page.evaluate(
        """() => [...document.querySelectorAll('.artifact-data-markdown img')].map(i => ({
            alt: i.alt, scheme: i.src.split(',')[0], width: i.naturalWidth, height: i.naturalHeight}))"""
    )


def _submit_custom_run(page, state: dict, marker: str, screenshot: Path) -> str:
    """Click Submit and return the id of the flow run it created (found through the API by ``marker``, one
    of its overrides). The UI does not retry a 503 of the SQLite-backed server (busy with the module's other
    runs on 2 cores): when no run appears and the form is still there, submit again, as a user would."""
    texts: list[str] = []
    with _api(state) as api:
        for _ in range(3):
            page.get_by_role("button", name="Submit").click()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                found = api.post("/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_DESC"}).json()
                runs = [r for r in found if marker in (r["parameters"].get("overrides") or [])]
                if runs:
                    assert len(runs) == 1, runs
                    return runs[0]["id"]
                time.sleep(1)
            texts.append(page.locator("body").inner_text()[-1500:])
            if not page.get_by_role("button", name="Submit").is_visible():
                break
    page.screenshot(path=str(screenshot / "submit-failed.png"))
    raise AssertionError(f"Submit created no flow run; the page said: {texts}")


def _submit_in_ui(state: dict, overrides: list[str], shots: Path) -> str:
    """Deployments -> finetune -> Run -> Custom run, one text box per override, Submit; the run's id."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{state['prefect_url']}/deployments", wait_until="networkidle")
        # the deployment's link (each row also links its flow, also called finetune)
        deployment_links = page.locator("a[href*='/deployments/deployment/']")
        deployment_links.filter(has_text=re.compile(r"^\s*finetune\s*$")).first.click()
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_role("button", name="Custom run").click()
        page.get_by_text("recipe_path").first.wait_for()
        for value in overrides:  # the overrides list: one text box per item
            boxes = page.locator("textarea")
            count = boxes.count()
            page.get_by_role("button", name="Add item").click()
            page.wait_for_function(f"document.querySelectorAll('textarea').length > {count}")
            boxes.nth(count).fill(value)
        workdir = next(value for value in overrides if value.startswith("workdir="))
        run_id = _submit_custom_run(page, state, marker=workdir, screenshot=shots)
        browser.close()
    return run_id


def test_custom_run_from_the_prefect_ui_in_headless_chromium(live_stack, stack_runs, tmp_path):
    """The run submitted in the UI's Custom run form (stack_runs) completes, and its summary and
    data-report artifacts show their plots in the browser."""
    from playwright.sync_api import sync_playwright

    run_id, overrides, workdir = stack_runs["ui"], stack_runs["ui_overrides"], stack_runs["ui_workdir"]
    prefect_ui, mlflow_ui = live_stack["prefect_url"], live_stack["mlflow_url"]
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{prefect_ui}/runs/flow-run/{run_id}", wait_until="domcontentloaded")

        badge, deadline = "", time.monotonic() + 600
        while time.monotonic() < deadline:
            page.reload(wait_until="networkidle")
            badge = page.locator(".state-badge").first.get_attribute("class") or ""
            if any(f"state--{s}" in badge for s in ("completed", "failed", "crashed", "cancelled")):
                break
            time.sleep(3)
        assert "state--completed" in badge, f"the run's state badge says {badge!r}"
        page.locator(".flow-run-graph canvas, canvas").first.wait_for()  # the flow run graph (a canvas)
        page.wait_for_timeout(2000)  # let the graph lay out its nodes before the screenshot
        shot = tmp_path / "prefect-flow-run.png"
        page.screenshot(path=str(shot))
        _keep_screenshot(shot)

        # the pictures are in the run's artifacts, embedded (data: URIs), and the browser decodes them
        images = _open_artifact(page, prefect_ui, run_id, "finetune-summary")
        assert {i["alt"] for i in images} == SUMMARY_PLOTS, images
        assert all(i["scheme"] == "data:image/png;base64" and i["width"] > 0 for i in images), images
        page.get_by_text("Gate:").first.wait_for()
        page.get_by_text("Sensitivity", exact=True).first.wait_for()
        page.set_viewport_size({"width": 1400, "height": 1700})  # the screenshot shows the pictures
        plots = page.locator(".markdown-renderer__heading--h2", has_text="Plots").first
        plots.evaluate(SCROLL_TO_TOP)
        page.wait_for_timeout(1000)
        shot = tmp_path / "prefect-run-artifacts.png"
        page.screenshot(path=str(shot))
        _keep_screenshot(shot)
        page.set_viewport_size({"width": 1400, "height": 900})
        images = _open_artifact(page, prefect_ui, run_id, "data-report")
        assert {i["alt"] for i in images} == {"Lengths", "Labels"}, images
        assert all(i["width"] > 0 for i in images), images

        # MLflow's pages keep polling, so the network never goes idle: wait for their content instead
        page.goto(f"{mlflow_ui}/#/models/helpdesk-ui/versions/1", wait_until="domcontentloaded")
        page.get_by_text("helpdesk-ui").first.wait_for(timeout=60_000)
        page.get_by_text("champion").first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)
        shot = tmp_path / "mlflow-model-version.png"
        page.screenshot(path=str(shot))
        _keep_screenshot(shot)

        import mlflow

        version = mlflow.MlflowClient(mlflow_ui).get_model_version("helpdesk-ui", "1")
        mlflow_run = mlflow.MlflowClient(mlflow_ui).get_run(version.run_id).info
        page.goto(
            f"{mlflow_ui}/#/experiments/{mlflow_run.experiment_id}/runs/{mlflow_run.run_id}",
            wait_until="domcontentloaded",
        )
        page.get_by_text(mlflow_run.run_name).first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)
        shot = tmp_path / "mlflow-run.png"
        page.screenshot(path=str(shot))
        _keep_screenshot(shot)
        browser.close()

    with _api(live_stack) as api:
        run = api.get(f"/flow_runs/{run_id}").json()
    assert run["state"]["type"] == "COMPLETED"
    assert run["parameters"]["overrides"] == overrides, "the parameters edited in the UI reached the run"
    assert (workdir / "runs").is_dir(), "the run used the workdir typed into the UI"


def _sms_rows(n_from: int, n_to: int):
    return read_sms_spam(SHARED_DATA).sample(frac=1.0, random_state=2).iloc[n_from:n_to]


def _drop_file(rows, zone: Path, name: str) -> None:
    """The writer's side of the protocol: write under a temporary name, then rename atomically."""
    import csv

    part = zone / f"{name}.part"
    rows.to_csv(part, sep="\t", index=False, quoting=csv.QUOTE_NONE)
    part.rename(zone / name)


def _delete_planned_runs(api: httpx.Client, deployment: str, quiet_s: float = 12.0) -> None:
    """Delete a deployment's planned (SCHEDULED) runs after its schedule was deleted. The scheduler (a 5 s
    loop here) may still insert runs it planned from the schedule it read before the delete: keep deleting
    until a couple of its loops pass without any."""
    deadline, quiet_since = time.monotonic() + 120, time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        assert time.monotonic() < deadline, "the scheduler kept planning runs of a deleted schedule"
        planned = [r for r in _runs_of(api, deployment) if r["state"]["type"] == "SCHEDULED"]
        for run in planned:
            api.delete(f"/flow_runs/{run['id']}")
        if planned:
            quiet_since = time.monotonic()
        time.sleep(2)


def _versions(mlflow_url: str, name: str) -> list:
    import mlflow

    return sorted(
        mlflow.MlflowClient(mlflow_url).search_model_versions(f"name = '{name}'"),
        key=lambda v: int(v.version),
    )


def _wait_versions(mlflow_url: str, name: str, predicate, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _versions(mlflow_url, name)
        if predicate(found):
            return found
        time.sleep(3)
    raise AssertionError(f"model versions of {name} after {timeout:.0f} s: {[v.version for v in found]}")


@pytest.fixture(scope="module")
def drop_zone_runs(live_stack, tiny_bert, tmp_path_factory):
    """The watcher on a real schedule, the event trigger, the worker: three sms_spam slices are dropped
    into the zone, the first alone, then two at once; a half-written file sits there all along. The tiny
    BERT keeps the retrains cheap: what is under test is the drop protocol and the lineage."""
    import yaml

    folder = tmp_path_factory.mktemp("drop-zone")
    zone = folder / "zone"
    zone.mkdir()
    recipe = {
        "name": "sms-stack-drops",
        "data": {
            "source": str(zone),
            "text_columns": ["SMS"],
            "label_column": "Label",
            "labels": ["ham", "spam"],
        },
        "model": {"base": str(tiny_bert), "max_length": 64},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1.0e-4},
        "continuous": {"settle_seconds": 0, "reannounce_seconds": 30},
        "evaluation": {"gate": {"baseline_floor": False}},
        "mlflow": {"registered_model": "sms-stack-drops", "tracking_uri": live_stack["mlflow_url"]},
        "workdir": str(folder / "work"),
    }
    recipe_path = folder / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    (zone / "drop-4.tsv.part").write_text("Label\tSMS\nham\tstill being wri")  # a writer not done yet
    with _api(live_stack) as api:
        watcher = _deployment_id(api, "watch-drops", "watch-drops")
        learner = _deployment_id(api, "continuous-learning", "continuous-learning")
        # the deployed every-minute schedule watches the demo recipe's zone: replace it by one on ours
        for schedule in api.get(f"/deployments/{watcher}/schedules").json():
            api.delete(f"/deployments/{watcher}/schedules/{schedule['id']}")
        for run in _runs_of(api, watcher):
            if run["state"]["type"] == "SCHEDULED":
                api.delete(f"/flow_runs/{run['id']}")
        schedule = {
            "schedule": {"interval": 15, "timezone": "UTC"},
            "active": True,
            "parameters": {"recipe_path": str(recipe_path), "overrides": []},
        }
        reply = api.post(f"/deployments/{watcher}/schedules", json=[schedule])
        assert reply.status_code == 201, reply.text
        _drop_file(_sms_rows(0, 250), zone, "drop-1.tsv")
        first = _wait_versions(live_stack["mlflow_url"], "sms-stack-drops", lambda v: len(v) >= 1, 600)
        _drop_file(_sms_rows(250, 500), zone, "drop-2.tsv")
        _drop_file(_sms_rows(500, 750), zone, "drop-3.tsv")

        def all_three(found: list) -> bool:
            return bool(found) and found[-1].tags.get("tunery.drops.count") == "3"

        final = _wait_versions(live_stack["mlflow_url"], "sms-stack-drops", all_three, 900)
        # stop the schedule, wait for the runs in flight, then restart the watcher once by hand
        for schedule in api.get(f"/deployments/{watcher}/schedules").json():
            api.delete(f"/deployments/{watcher}/schedules/{schedule['id']}")
        _delete_planned_runs(api, watcher)
        busy = [
            r["id"]
            for r in _runs_of(api, watcher) + _runs_of(api, learner)
            if r["state"]["type"] not in FINAL
        ]
        _wait_final(api, busy, timeout=600)
        learned_before = len(_runs_of(api, learner))
        reply = api.post(
            f"/deployments/{watcher}/create_flow_run",
            json={"parameters": {"recipe_path": str(recipe_path), "overrides": []}},
        )
        assert reply.status_code == 201, reply.text
        restart = _wait_final(api, [reply.json()["id"]], timeout=300)[reply.json()["id"]]
        time.sleep(20)  # an event from the restarted watcher would start a run within seconds
        watch_runs = [r for r in _runs_of(api, watcher) if r["state"]["type"] == "COMPLETED"]
        learn_runs = _runs_of(api, learner)
        restart_result = api.get(f"/flow_runs/{reply.json()['id']}").json()
        # the learn runs that trained: a drop re-announced while a retrain holds it starts a run that
        # finds the dataset up to date, which trains nothing
        body = {
            "task_runs": {
                "flow_run_id": {"any_": [r["id"] for r in learn_runs]},
                "name": {"like_": "train-"},
                "state": {"type": {"any_": ["COMPLETED"]}},
            }
        }
        trained = {
            t["flow_run_id"]
            for t in api.post("/task_runs/filter", json=body).json()
            if t["name"].startswith("train-")
        }
    return {
        "recipe_path": recipe_path,
        "zone": zone,
        "first": first,
        "final": final,
        "restart": restart,
        "restart_result": restart_result,
        "watch_runs": watch_runs,
        "learn_runs": learn_runs,
        "trained_runs": trained,
        "learned_before": learned_before,
    }


def test_drops_are_each_processed_once_with_the_right_lineage(live_stack, drop_zone_runs):
    from tunery.config import load_recipe
    from tunery.continual.drops import Manifest
    from tunery.continual.lineage import lineage

    runs = drop_zone_runs
    assert all(r["state"]["type"] == "COMPLETED" for r in runs["learn_runs"]), [
        (r["name"], r["state"]["type"]) for r in runs["learn_runs"]
    ]
    assert len(runs["watch_runs"]) >= 3, "the schedule ran the watcher repeatedly"
    manifest = Manifest.of(load_recipe(runs["recipe_path"]))
    drops = manifest.drops()
    assert sorted(d.name for d in drops) == ["drop-1.tsv", "drop-2.tsv", "drop-3.tsv"]
    assert all(d.status == "committed" for d in drops)
    ids = {d.name: d.id for d in drops}
    versions = _versions(live_stack["mlflow_url"], "sms-stack-drops")
    # every drop was new in exactly one model version (each drop trained into the data once)
    new_in = [d for v in versions for d in v.tags["tunery.drops.new"].split(",") if d]
    assert sorted(new_in) == sorted(ids.values())
    first = lineage("sms-stack-drops@1", live_stack["mlflow_url"])
    assert [d["id"] for d in first["drops"]] == [ids["drop-1.tsv"]]
    last = lineage(f"sms-stack-drops@{versions[-1].version}", live_stack["mlflow_url"])
    assert {d["id"] for d in last["drops"]} == set(ids.values())
    assert {d["sha256"][:16] for d in last["drops"]} == set(ids.values())  # id = content hash prefix
    # one retrain per model version: a burst never trains the same data twice
    assert len(runs["trained_runs"]) == len(versions), (len(runs["learn_runs"]), len(versions))
    cli = _tunery(
        "lineage",
        f"sms-stack-drops@{versions[-1].version}",
        "--tracking-uri",
        live_stack["mlflow_url"],
        env=live_stack["env"],
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert all(drop_id in cli.stdout for drop_id in ids.values())


def test_a_half_written_file_is_never_ingested(drop_zone_runs):
    from tunery.config import load_recipe
    from tunery.continual.drops import Manifest

    names = [d.name for d in Manifest.of(load_recipe(drop_zone_runs["recipe_path"])).drops()]
    assert "drop-4.tsv.part" not in names and (drop_zone_runs["zone"] / "drop-4.tsv.part").exists()


def test_restarting_the_watcher_reprocesses_nothing(drop_zone_runs):
    runs = drop_zone_runs
    assert runs["restart"]["state"]["type"] == "COMPLETED"
    assert len(runs["learn_runs"]) == runs["learned_before"], "the restarted watcher started a retrain"


def test_a_burst_of_drop_events_starts_one_continuous_learning_run(live_stack, drop_zone_runs):
    """Two `tunery.drop.arrived` events from one drop zone within a minute: the deployment trigger in
    prefect.yaml starts exactly one run, with the recipe named in the event's payload (here nothing is
    pending any more, so the run finds the dataset up to date)."""
    import uuid

    recipe_path = drop_zone_runs["recipe_path"]

    def event(name: str) -> dict:
        return {
            "id": str(uuid.uuid4()),
            "occurred": dt.datetime.now(dt.UTC).isoformat(),
            "event": "tunery.drop.arrived",
            "resource": {"prefect.resource.id": "tunery.drop-zone.test", "tunery.file": name},
            "payload": {"recipe_path": str(recipe_path), "file": name},
        }

    with _api(live_stack) as api:
        deployment = _deployment_id(api, "continuous-learning", "continuous-learning")
        before = {r["id"] for r in _runs_of(api, deployment)}
        reply = api.post("/events", json=[event("drop-1.csv"), event("drop-2.csv")])
        assert reply.status_code == 204, reply.text
        deadline, runs = time.monotonic() + 90, []
        while not runs and time.monotonic() < deadline:
            runs = [r for r in _runs_of(api, deployment) if r["id"] not in before]
            time.sleep(2)
        assert runs, "the drop event started no run in 90 s"
        final = _wait_final(api, [runs[0]["id"]], timeout=600)[runs[0]["id"]]
        assert final["state"]["type"] == "COMPLETED"
        assert final["parameters"]["recipe_path"] == str(recipe_path)
        time.sleep(5)
        assert len([r for r in _runs_of(api, deployment) if r["id"] not in before]) == 1, "one retrain"
