"""Launching a training job as its own process group, with the DeepSpeed launcher.

The orchestrator (a Prefect task, or a plain ``tunery`` call) never trains in its own process: it writes a
job spec, starts DeepSpeed's launcher with ``--module tunery.training.worker SPEC`` in N processes per node
(N GPUs; without GPUs, N CPU processes over gloo; a hostfile for several nodes), streams the job's output
line by line to a callback, enforces a timeout, and turns a non-zero exit into an error that carries the
tail of the log.

Checkpoints are written every ``training.save_steps`` steps; before each launch the newest *complete*
checkpoint is found (incomplete ones, left by a crash mid-save, are removed) and the job resumes from it.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from tunery.config import Recipe
from tunery.layout import COMPLETE_MARKER, RunLayout
from tunery.ops.cpus import usable_cpus
from tunery.ops.process import free_port, stop_group
from tunery.tracking import redact_value

TAIL_LINES = 80
ZERO_CONFIGS = "zero_configs"  # package-data folder of the DeepSpeed JSON configs, one per recipe choice
# The module the launcher starts in every rank: its main() reads the job spec and runs loop.train().
WORKER_MODULE = "tunery.training.worker"


class TrainingJobFailed(RuntimeError):
    """The training job exited with an error (the message carries the tail of its log)."""


class TrainingTimeout(TrainingJobFailed):
    """The training job ran longer than ``distributed.timeout_minutes`` and was stopped."""


def deepspeed_config_text(name: str) -> str:
    """The DeepSpeed JSON config ``name`` (``zero1`` ... ``zero3_offload``), with its "auto" values unfilled.

    The configs ship inside the package (``tunery/training/zero_configs/``, found with importlib.resources,
    so an installed wheel has them too); a folder in ``TUNERY_DEEPSPEED_CONFIGS`` replaces them.
    """
    override = os.environ.get("TUNERY_DEEPSPEED_CONFIGS")
    source = (
        Path(override) / f"{name}.json"
        if override
        else resources.files("tunery.training").joinpath(ZERO_CONFIGS, f"{name}.json")
    )
    if not source.is_file():
        raise FileNotFoundError(f"DeepSpeed config {name!r} not found at {source}")
    return source.read_text(encoding="utf-8")


def _fill(value: object, key: str, fills: dict[str, object]) -> object:
    if isinstance(value, dict):
        return {k: _fill(v, k, fills) for k, v in value.items()}
    return fills.get(key, value) if value == "auto" else value


def render_deepspeed_config(recipe: Recipe, out_path: Path) -> Path | None:
    """Write the recipe's DeepSpeed config with its "auto" values filled in from the recipe.

    Values that depend on the world size or the model (total batch size, bucket sizes) stay "auto" for
    the HF Trainer to fill at start-up. Returns None when the recipe uses no DeepSpeed.
    """
    name = recipe.distributed.deepspeed
    if name == "none":
        return None
    t = recipe.training
    fills: dict[str, object] = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "gradient_clipping": t.max_grad_norm,
        "lr": t.learning_rate,
        "weight_decay": t.weight_decay,
    }
    config = _fill(json.loads(deepspeed_config_text(name)), "", fills)
    config["bf16"]["enabled"] = t.precision == "bf16"
    config["fp16"]["enabled"] = t.precision == "fp16"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(config, indent=2))
    return out_path


def build_command(recipe: Recipe, spec_path: Path, port: int) -> list[str]:
    """The launcher command line.

    A single process without DeepSpeed runs the worker directly (it sets up a world of one itself). On one
    machine (no hostfile) the job starts DeepSpeed's per-node launcher, ``deepspeed.launcher.launch``, with
    the world ``{"localhost": [0 .. N-1]}``: that is the command the ``deepspeed`` runner would build and
    start, and skipping the runner saves a Python process that imports DeepSpeed (~4 s of CPU a job here).
    With a hostfile the runner starts the launcher on every node.
    """
    dist = recipe.distributed
    if dist.num_processes == 1 and dist.deepspeed == "none" and not dist.hostfile:
        return [sys.executable, "-u", "-m", WORKER_MODULE, str(spec_path)]
    worker = ["--module", WORKER_MODULE, str(spec_path)]
    if not dist.hostfile:
        return [
            sys.executable,
            "-u",
            "-m",
            "deepspeed.launcher.launch",
            f"--world_info={local_world_info(dist.num_processes)}",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            "--no_local_rank",
            *worker,
        ]
    return [
        sys.executable,
        "-u",
        "-m",
        "deepspeed.launcher.runner",
        "--master_port",
        str(port),
        "--no_local_rank",
        "--hostfile",
        dist.hostfile,
        "--num_gpus",
        str(dist.num_processes),
        *worker,
    ]


def local_world_info(num_processes: int) -> str:
    """DeepSpeed's ``--world_info`` for one machine: base64 (URL-safe) of ``{"localhost": [ranks]}``."""
    world = json.dumps({"localhost": list(range(num_processes))})
    return base64.urlsafe_b64encode(world.encode("utf-8")).decode("ascii")


THREAD_CAP = "TUNERY_MAX_CPU_THREADS"  # caps each rank's torch CPU threads (a machine shared with other work)


def threads_per_process(recipe: Recipe) -> int:
    """torch CPU threads of each rank: ``training.num_threads``, else the CPUs this process may use (its
    affinity mask and cgroup quota, :func:`tunery.ops.cpus.usable_cpus`) shared by the ranks, capped by
    ``TUNERY_MAX_CPU_THREADS`` where the caller set it (a machine shared with other jobs: more threads than
    cores make OpenMP spin against itself). An inherited ``OMP_NUM_THREADS`` is not
    taken: images often preset it to 1, which would quietly slow every job."""
    if recipe.training.num_threads:
        return recipe.training.num_threads
    share = max(1, usable_cpus() // recipe.distributed.num_processes)
    cap = os.environ.get(THREAD_CAP, "").strip()
    try:
        return max(1, min(share, int(cap))) if cap else share
    except ValueError:
        raise ValueError(f"{THREAD_CAP}={cap!r} is not a whole number of threads") from None


# glibc's malloc serves every allocation above 32 MB with a fresh mmap and returns it on free: a CPU training
# step that builds and drops logits of (tokens x vocabulary) floats then faults in and zeroes gigabytes of
# new pages each time. Kept in the heap instead (no mmap, no trimming), the memory is reused: measured on a
# tiny Llama with SmolLM2's 49k vocabulary (DPO, 4 pairs of 1,024 tokens), 14.1 -> 5.4 s a step, kernel
# time 154 -> 5 s, peak RSS 5.1 -> 5.8 GB. A value the caller set is kept.
CPU_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def job_environment(recipe: Recipe, port: int, cuda: bool) -> dict[str, str]:
    """Environment of the job: single-process rendezvous variables, CPU accelerator, thread split and
    allocator settings."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(recipe.workdir) / "torch_extensions"))
    if not cuda:
        env["DS_ACCELERATOR"] = "cpu"
        env["OMP_NUM_THREADS"] = str(threads_per_process(recipe))
        for name, value in CPU_MALLOC.items():
            env.setdefault(name, value)
    env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    # Rank variables come from the launcher; stale ones from a parent job must not leak into this one.
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        env.pop(name, None)
    # No PYTHONPATH is added: the ranks run this interpreter (sys.executable), which imports tunery the way
    # this process does (an installed wheel, or an editable install of a checkout).
    return env


def latest_complete_checkpoint(layout: RunLayout, remove_incomplete: bool = True) -> Path | None:
    """The newest checkpoint with a completion marker; incomplete ones are removed (a crash mid-save)."""
    root = layout.checkpoints
    if not root.is_dir():
        return None
    found = sorted(root.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    complete = [p for p in found if (p / COMPLETE_MARKER).is_file()]
    if remove_incomplete:
        for path in found:
            if path not in complete:
                shutil.rmtree(path, ignore_errors=True)
    return complete[-1] if complete else None


def write_spec(
    recipe: Recipe,
    layout: RunLayout,
    run_id: str | None,
    resume: Path | None,
    distillation: dict | None = None,
) -> Path:
    """The job spec the worker reads: recipe, run folder, MLflow run, checkpoint to resume from, and the
    distillation settings of a student's job (``{"alpha", "temperature"}``, else None)."""
    ds_config = render_deepspeed_config(recipe, layout.train_dir / "deepspeed.json")
    spec = {
        # the job reads the run folder, never the data source: a credential in it stays out of the file
        "recipe": redact_value(recipe.model_dump(mode="json")),
        "run_dir": str(layout.root),
        "run_id": run_id,
        "resume_from": str(resume) if resume else None,
        "deepspeed_config": str(ds_config) if ds_config else None,
        "distillation": distillation,
    }
    path = layout.train_dir / "job.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2))
    return path


def _last_lines(tail: collections.deque) -> str:
    """The tail as text, safely while the reader thread may still append to it (a job stopped early)."""
    for _ in range(10):
        try:
            return "\n".join(list(tail))
        except RuntimeError:  # deque mutated during iteration
            time.sleep(0.05)
    return "(the job's last lines could not be read)"


def _pump(stream, on_line: Callable[[str], None], tail: collections.deque) -> None:
    broken = False
    for raw in iter(stream.readline, ""):
        line = raw.rstrip("\n")
        tail.append(line)
        if broken:
            continue
        try:
            on_line(line)
        except Exception as error:  # noqa: BLE001 - keep draining: a full pipe would block the job
            broken = True
            tail.append(f"tunery: the log consumer failed ({error!r}); later lines are only kept here")


class TrainingStopped(RuntimeError):
    """The caller asked the job to stop (a search pruning a bad trial) and it was stopped."""


def _wait(proc: subprocess.Popen, timeout_s: float, stop_when: Callable[[], bool] | None) -> bool:
    """Wait for the job; True when ``stop_when`` asked for a stop first (polled twice a second)."""
    if stop_when is None:
        proc.wait(timeout=timeout_s)
        return False
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            proc.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            return False
        except subprocess.TimeoutExpired:
            if stop_when():
                return True
            if time.monotonic() >= deadline:
                raise


def run_job(
    cmd: list[str],
    env: dict[str, str],
    timeout_s: float,
    on_line: Callable[[str], None],
    stop_when: Callable[[], bool] | None = None,
) -> None:
    """Run a command in its own process group, streaming its output; raise on failure or timeout.

    Raises:
        TrainingStopped: ``stop_when()`` turned true while the job ran; the whole group was stopped.
    """
    tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # own process group: a timeout stops the launcher and every rank
    )
    reader = threading.Thread(target=_pump, args=(proc.stdout, on_line, tail), daemon=True)
    reader.start()
    try:
        stopped = _wait(proc, timeout_s, stop_when)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        reader.join(timeout=5)
        raise TrainingTimeout(
            f"training job stopped after the {timeout_s / 60:.1f} min timeout (distributed.timeout_minutes); "
            "last lines:\n" + _last_lines(tail)
        ) from None
    except BaseException:
        stop_group(proc)
        raise
    if stopped:
        stop_group(proc)
        reader.join(timeout=5)
        raise TrainingStopped("training job stopped on request; last lines:\n" + _last_lines(tail))
    reader.join(timeout=10)
    if proc.returncode != 0:
        raise TrainingJobFailed(
            f"training job exited with code {proc.returncode}; last lines:\n" + _last_lines(tail)
        )


# DeepSpeed's CPU allreduce (csrc/cpu/comm/shm.cpp) gives each rank a shared-memory buffer
# /dev/shm/deepspeed_allreduce_buffer_<uid>_<master addr>_<master port>_<rank> and never unlinks it: without
# the clean-up below every 2-process CPU job leaves 2 x 67 MB of RAM in /dev/shm until the machine reboots
# (250 of them, 16 GB, had piled up here before it was found).
SHM_DIR = Path("/dev/shm")
SHM_BUFFER = "deepspeed_allreduce_buffer"


def release_shared_memory(port: int, shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink this machine's allreduce buffers of the job whose master port was ``port`` (its master address
    is 127.0.0.1, or a hostfile's first node); returns their names."""
    removed = []
    for path in shm_dir.glob(f"{SHM_BUFFER}_{os.getuid()}_*_{port}_*"):
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def _mapped_files() -> set[str]:
    """Paths of the files that this user's live processes have mapped (from /proc/<pid>/maps)."""
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text(errors="replace")
        except OSError:  # gone meanwhile, or another user's
            continue
        fields = (line.split(None, 5) for line in text.splitlines())
        mapped.update(f[5] for f in fields if len(f) == 6)  # address perms offset dev inode [path]
    return mapped


def release_orphaned_shared_memory(shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink this user's allreduce buffers that no live process maps (jobs whose launching process was
    killed before it could clean up); returns their names."""
    buffers = list(shm_dir.glob(f"{SHM_BUFFER}_{os.getuid()}_*"))
    if not buffers:
        return []
    mapped = {Path(p).name for p in _mapped_files() if p.startswith(str(shm_dir))}
    removed = []
    for path in buffers:
        if path.name not in mapped:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def launch_training(
    recipe: Recipe,
    layout: RunLayout,
    run_id: str | None = None,
    on_line: Callable[[str], None] = print,
    stop_when: Callable[[], bool] | None = None,
    distillation: dict | None = None,
) -> Path:
    """Train the recipe's model as a separate (multi-)process job and return the saved model folder.

    Resumes from the newest complete checkpoint in the run folder, if any (a retried task continues where
    the crashed attempt stopped). ``stop_when`` (polled twice a second) stops the job early: a search prunes
    a trial with it (:class:`TrainingStopped`). ``distillation`` (``{"alpha", "temperature"}``) trains a
    student on ``layout.teacher_outputs`` (:mod:`tunery.training.distill`).
    """
    import torch

    from tunery.training.methods import check_supported

    check_supported(recipe)
    resume = latest_complete_checkpoint(layout)
    if resume is not None:
        on_line(f"tunery: resuming from {resume.name} (step {resume.name.split('-')[-1]})")
    port = recipe.distributed.master_port or free_port()
    spec = write_spec(recipe, layout, run_id, resume, distillation)
    cmd = build_command(recipe, spec, port)
    on_line("tunery: launching " + " ".join(cmd))
    if stale := release_orphaned_shared_memory():
        on_line(f"tunery: removed {len(stale)} shared-memory buffer(s) of earlier jobs that no process uses")
    started = time.monotonic()
    try:
        run_job(
            cmd,
            job_environment(recipe, port, torch.cuda.is_available()),
            recipe.distributed.timeout_minutes * 60,
            on_line,
            stop_when,
        )
    finally:
        release_shared_memory(port)
    on_line(f"tunery: training job finished in {time.monotonic() - started:.0f} s")
    return layout.model_dir
