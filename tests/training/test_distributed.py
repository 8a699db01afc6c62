"""Real multi-process training jobs on CPU: the DeepSpeed launcher, 2 processes over gloo."""

from __future__ import annotations

import base64
import json
import re

import pytest

from tests.training.test_loop import recipe_for, write_splits
from tunery.training import launch
from tunery.training.launch import (
    TrainingJobFailed,
    build_command,
    job_environment,
    launch_training,
    render_deepspeed_config,
)

pytestmark = pytest.mark.slow

STEP_LINE = re.compile(r"^step (\d+)/(\d+) .*?\bloss=([0-9.]+)")


def run(recipe, layout) -> list[str]:
    lines: list[str] = []
    launch_training(recipe, layout, run_id=None, on_line=lines.append)
    return lines


def logged_losses(lines: list[str]) -> dict[int, float]:
    return {int(m[1]): float(m[3]) for m in map(STEP_LINE.match, lines) if m}


def test_zero2_two_processes_trains_and_loss_is_not_scaled(tiny_bert, tmp_path, monkeypatch):
    overrides = {"max_steps": 12, "logging_steps": 2, "save_steps": 100, "learning_rate": 1e-3}
    single = recipe_for(tiny_bert, "full", tmp_path / "one", **overrides)
    lines_1 = run(single, write_splits(tmp_path / "one"))

    double = recipe_for(tiny_bert, "full", tmp_path / "two", **overrides)
    double = double.model_copy(
        update={
            "distributed": double.distributed.model_copy(update={"num_processes": 2, "deepspeed": "zero2"})
        }
    )
    layout = write_splits(tmp_path / "two")
    released: list[str] = []
    real_release = launch.release_shared_memory
    monkeypatch.setattr(
        launch, "release_shared_memory", lambda port: released.extend(real_release(port)) or released
    )
    lines_2 = run(double, layout)
    # Whatever shared-memory buffers DeepSpeed's CPU allreduce left for this job's port were released (it
    # does not create them for every job: the removal itself is tested on files below)
    port = next(re.search(r"--master_port=(\d+)", line)[1] for line in lines_2 if "--master_port=" in line)
    assert all(f"_{port}_" in name for name in released)
    assert not list(launch.SHM_DIR.glob(f"{launch.SHM_BUFFER}_*_{port}_*"))

    # DeepSpeed's launcher started the job and spawned both ranks
    assert any("-m deepspeed.launcher.launch --world_info=" in line for line in lines_2)
    assert any("dist_world_size=2" in line for line in lines_2)
    summary = json.loads((layout.train_dir / "metrics.json").read_text())
    assert summary["world_size"] == 2 and summary["global_steps"] == 12
    one, two = logged_losses(lines_1), logged_losses(lines_2)
    assert set(one) == set(two) == {2, 4, 6, 8, 10, 12}
    # Each process sees other batches, so losses differ a little; a world-size scaling bug doubles them.
    ratios = [two[s] / one[s] for s in one]
    assert all(0.6 < r < 1.5 for r in ratios), f"2-process loss / 1-process loss per step: {ratios}"
    assert two[12] < two[2], "loss went down under ZeRO-2"
    assert (layout.model_dir / "model.safetensors").exists()


def test_rendered_deepspeed_config_fills_auto_from_the_recipe(tiny_bert, tmp_path):
    recipe = recipe_for(tiny_bert, "full", tmp_path, batch_size=4, gradient_accumulation_steps=3)
    recipe = recipe.model_copy(
        update={"distributed": recipe.distributed.model_copy(update={"deepspeed": "zero3"})}
    )
    path = render_deepspeed_config(recipe, tmp_path / "ds.json")
    config = json.loads(path.read_text())
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 3
    assert config["gradient_clipping"] == 1.0
    assert config["bf16"]["enabled"] is False and config["fp16"]["enabled"] is False
    assert config["zero_optimization"]["stage"] == 3
    assert config["train_batch_size"] == "auto", "the world size is only known to the launched job"
    worker = ["--module", "tunery.training.worker", str(tmp_path / "job.json")]
    cmd = build_command(recipe, tmp_path / "job.json", 29500)
    # one machine: DeepSpeed's per-node launcher with the runner's world {"localhost": [0]}
    assert cmd[2:4] == ["-m", "deepspeed.launcher.launch"] and cmd[-3:] == worker
    world = next(a for a in cmd if a.startswith("--world_info="))
    assert json.loads(base64.urlsafe_b64decode(world.split("=", 1)[1])) == {"localhost": [0]}
    assert "--master_port=29500" in cmd and "--no_local_rank" in cmd
    hosts = tmp_path / "hostfile"
    hosts.write_text("node-a slots=2\nnode-b slots=2\n")
    several = recipe.model_copy(
        update={"distributed": recipe.distributed.model_copy(update={"hostfile": str(hosts)})}
    )
    cmd = build_command(several, tmp_path / "job.json", 29500)
    assert cmd[2:4] == ["-m", "deepspeed.launcher.runner"] and cmd[-3:] == worker
    assert cmd[cmd.index("--hostfile") + 1] == str(hosts)


def test_ranks_share_the_cores_and_a_thread_cap_is_kept(tiny_bert, tmp_path, monkeypatch):
    recipe = recipe_for(tiny_bert, "full", tmp_path)
    two = recipe.model_copy(
        update={"distributed": recipe.distributed.model_copy(update={"num_processes": 2})}
    )
    monkeypatch.setattr("tunery.training.launch.usable_cpus", lambda: 8)  # the CPUs this process may use
    monkeypatch.delenv("TUNERY_MAX_CPU_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # preset by many images: not a cap, it would slow every job
    assert job_environment(two, 29500, cuda=False)["OMP_NUM_THREADS"] == "4"
    assert job_environment(recipe, 29500, cuda=False)["OMP_NUM_THREADS"] == "8"
    monkeypatch.setenv("TUNERY_MAX_CPU_THREADS", "2")  # a machine shared with other jobs
    assert job_environment(two, 29500, cuda=False)["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("TUNERY_MAX_CPU_THREADS", "16")  # a cap, never more threads than the rank's share
    assert job_environment(two, 29500, cuda=False)["OMP_NUM_THREADS"] == "4"
    monkeypatch.setenv("TUNERY_MAX_CPU_THREADS", "lots")
    with pytest.raises(ValueError, match="TUNERY_MAX_CPU_THREADS='lots' is not a whole number"):
        job_environment(two, 29500, cuda=False)
    monkeypatch.setenv("TUNERY_MAX_CPU_THREADS", "²")  # str.isdigit() says yes, int() says no
    with pytest.raises(ValueError, match="not a whole number"):
        job_environment(two, 29500, cuda=False)
    monkeypatch.delenv("TUNERY_MAX_CPU_THREADS")
    pinned = two.model_copy(update={"training": two.training.model_copy(update={"num_threads": 3})})
    assert job_environment(pinned, 29500, cuda=False)["OMP_NUM_THREADS"] == "3"


def test_failing_job_reports_the_tail_of_its_log(tiny_bert, tmp_path):
    recipe = recipe_for(tiny_bert, "full", tmp_path)
    layout = write_splits(tmp_path)
    layout.split("train").write_text("not parquet")  # the worker will crash reading it
    with pytest.raises(TrainingJobFailed, match=r"exited with code 1; last lines:\n(.|\n)*train.parquet"):
        run(recipe, layout)


def test_zero2_job_retried_after_its_last_step_trains_no_extra_step(tiny_bert, tmp_path):
    """A 2-process ZeRO-2 job that trained to its budget and failed afterwards (in the export, say) is
    retried: it resumes from the budget's checkpoint and exports it, without a step 7 of 6."""
    recipe = recipe_for(tiny_bert, "full", tmp_path, max_steps=6, save_steps=3, logging_steps=2)
    recipe = recipe.model_copy(
        update={
            "distributed": recipe.distributed.model_copy(update={"num_processes": 2, "deepspeed": "zero2"})
        }
    )
    layout = write_splits(tmp_path)
    run(recipe, layout)
    first = json.loads((layout.train_dir / "metrics.json").read_text())
    (layout.model_dir / "model.safetensors").unlink()  # what the failed export left

    lines = run(recipe, layout)
    assert "tunery: resuming from checkpoint-6 (step 6)" in lines
    assert not any(line.startswith("step 7/") for line in lines), [x for x in lines if x.startswith("step")]
    assert any("checkpoint-6 holds all 6 steps of the budget" in line for line in lines), lines[-30:]
    resumed = json.loads((layout.train_dir / "metrics.json").read_text())
    assert resumed["global_steps"] == 6 and resumed["world_size"] == 2
    assert resumed["resumed_from"].endswith("checkpoint-6")
    assert resumed["validation"]["loss"] == pytest.approx(first["validation"]["loss"], abs=1e-5)
    assert (layout.model_dir / "model.safetensors").exists()
    assert not (layout.checkpoints / "checkpoint-7").exists()


def test_orphaned_shared_memory_buffers_are_removed_and_mapped_ones_kept(tmp_path):
    """Buffers no process maps (a job whose launching process was killed) are removed; a mapped one (a job
    still running) and another user's are left alone."""
    import mmap
    import os

    uid = os.getuid()
    orphan = tmp_path / f"{launch.SHM_BUFFER}_{uid}_127.0.0.1_40001_0"
    alive = tmp_path / f"{launch.SHM_BUFFER}_{uid}_127.0.0.1_40002_0"
    other_user = tmp_path / f"{launch.SHM_BUFFER}_{uid + 1}_127.0.0.1_40003_0"
    unrelated = tmp_path / "some_other_segment"
    for path in (orphan, alive, other_user, unrelated):
        path.write_bytes(b"\0" * 4096)
    with alive.open("r+b") as handle, mmap.mmap(handle.fileno(), 4096):
        removed = launch.release_orphaned_shared_memory(tmp_path)
    assert removed == [orphan.name]
    assert not orphan.exists() and alive.exists() and other_user.exists() and unrelated.exists()
    assert launch.release_shared_memory(40002, tmp_path) == [alive.name] and not alive.exists()


def test_cpu_jobs_keep_freed_memory_for_reuse_unless_the_caller_chose_otherwise(
    tiny_bert, tmp_path, monkeypatch
):
    """glibc's mmap threshold makes every large CPU tensor a fresh mapping (launch.CPU_MALLOC): CPU jobs get
    the heap settings, a value the caller exported wins, and GPU jobs are left alone."""
    recipe = recipe_for(tiny_bert, "full", tmp_path)
    for name in launch.CPU_MALLOC:
        monkeypatch.delenv(name, raising=False)
    cpu = job_environment(recipe, 29500, cuda=False)
    assert {k: cpu[k] for k in launch.CPU_MALLOC} == launch.CPU_MALLOC
    assert cpu["MALLOC_MMAP_MAX_"] == "0" and int(cpu["MALLOC_TRIM_THRESHOLD_"]) >= 2**32
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")
    assert job_environment(recipe, 29500, cuda=False)["MALLOC_MMAP_MAX_"] == "65536"
    monkeypatch.delenv("MALLOC_MMAP_MAX_")
    assert not set(launch.CPU_MALLOC) & set(job_environment(recipe, 29500, cuda=True))
