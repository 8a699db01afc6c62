"""Orchestration overhead: how much of a finetune flow run's wall time is not spent inside its tasks.

The demo recipe (``configs/helpdesk.yaml``, unchanged except for a temporary workdir) runs through the
``finetune`` flow twice, each time in a fresh process of this script:

* ephemeral: no ``PREFECT_API_URL``; Prefect runs its API in-process (what ``tunery run`` does);
* server: against a real ``prefect server`` started on 127.0.0.1 by this script (``PREFECT_API_URL``).

For each, from Prefect's own records of the run: ``flow_wall_s`` = the flow run's end - start,
``task_compute_s`` = the sum over its task runs of end - start, and ``overhead_ratio`` = flow_wall_s /
task_compute_s (target <= 1.05). The wall clock around the flow call in the process (``call_wall_s``,
which adds flow-run creation and result handling) is reported beside it, as ``call_ratio``.

Usage::

    python benchmarks/orchestration_overhead.py          # both modes, ~4-5 min on 2 cores

Results go to ``benchmarks/results/orchestration_overhead.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hostinfo

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "orchestration_overhead.json"
RECIPE = REPO / "configs" / "helpdesk.yaml"
RESULT_PREFIX = "ORCHESTRATION-RESULT "
TARGET = 1.05


def worker(workdir: Path) -> None:
    """Run the flow once in this process and print Prefect's timings of it as one JSON line."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.finetune import finetune

    started = time.perf_counter()
    state = finetune(recipe_path=str(RECIPE), overrides=[f"workdir={workdir}"], return_state=True)
    call_wall = time.perf_counter() - started
    if not state.is_completed():
        raise SystemExit(f"the flow run ended {state.type}: {state.message}")
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    tasks = {
        t.name: round((t.end_time - t.start_time).total_seconds(), 3)
        for t in sorted(task_runs, key=lambda t: t.start_time)
        if t.start_time and t.end_time
    }
    flow_wall = (flow_run.end_time - flow_run.start_time).total_seconds()
    compute = sum(tasks.values())
    result = {
        "flow_run_id": str(flow_run_id),
        "flow_wall_s": round(flow_wall, 3),
        "task_compute_s": round(compute, 3),
        "overhead_s": round(flow_wall - compute, 3),
        "overhead_ratio": round(flow_wall / compute, 4),
        "call_wall_s": round(call_wall, 3),
        "call_ratio": round(call_wall / compute, 4),
        "tasks": tasks,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_mode(mode: str, env: dict[str, str], workdir: Path) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--workdir", str(workdir)]
    print(f"{mode}: {shlex.join(command)}", flush=True)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{mode} run failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}"
        )
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    parser.add_argument("--modes", default="ephemeral,server", help="comma-separated: ephemeral, server")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.workdir)
        return None
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"ephemeral", "server"}:
        parser.error("--modes takes ephemeral and/or server")

    from tunery.ops import stack

    machine = hostinfo.machine_info(("prefect", "torch", "transformers", "mlflow", "tunery"))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tunery-orchestration-") as tmp:
        root = Path(tmp)
        base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
        base.update(
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            MLFLOW_DISABLE_TELEMETRY="true",
            PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        )
        for mode in modes:
            env = {**base, "PREFECT_HOME": str(root / f"prefect-{mode}")}
            server = None
            if mode == "server":
                server = stack.start_prefect(root / "server")
                env["PREFECT_API_URL"] = f"{server.url}/api"
            try:
                results[mode] = run_mode(mode, env, root / f"work-{mode}")
            finally:
                if server is not None:
                    stack.stop_services([server])
    doc = {
        "benchmark": "orchestration_overhead",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()]},
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "settings": {"recipe": str(RECIPE.relative_to(REPO)), "modes": modes},
        "modes": results,
        "targets": {
            mode: {
                "target_ratio": TARGET,
                "overhead_ratio": r["overhead_ratio"],
                "met": r["overhead_ratio"] <= TARGET,
            }
            for mode, r in results.items()
        },
        "notes": [
            "flow_wall_s and task run times are Prefect's own start/end times of the flow run and its task "
            "runs; overhead_ratio = flow_wall_s / sum of task run durations (tasks run one after the other)",
            "call_wall_s = wall clock around the flow call in the worker process (adds flow-run creation, "
            "the ephemeral API's start for the first call, and result handling); imports are not timed",
            "the server runs on the same 2 cores as the flow",
        ],
    }
    hostinfo.write_result(args.out, doc)
    for mode, r in results.items():
        print(
            f"{mode:<10} flow {r['flow_wall_s']:.1f} s, tasks {r['task_compute_s']:.1f} s, "
            f"ratio {r['overhead_ratio']:.4f} (call {r['call_wall_s']:.1f} s, {r['call_ratio']:.4f})"
        )
    print(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
