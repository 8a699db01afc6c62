"""tunery installed from a wheel, outside the checkout, runs a real 2-process DeepSpeed job on CPU.

The wheel is built from a clean copy of the project's sources (nothing is written into the checkout, and
stale ``build/`` contents there cannot leak into it), installed with ``--no-deps`` into a fresh venv
outside the repo, and the job is launched from a folder outside the repo with no PYTHONPATH. The heavy
dependencies (torch, transformers, DeepSpeed) are not installed again: a path line in a ``.pth`` file makes
the main venv's site-packages importable. A path line does not run the ``.pth`` files inside that folder,
so the checkout's editable-install finder stays off and ``import tunery`` can only find the installed wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.training.test_loop import recipe_for, write_splits

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "tunery", "tasks", "flows")  # what the build reads
REPORT = "tunery-import-report:"

# A startup hook in the new venv (an import line in a .pth runs in every interpreter start, ranks included):
# at exit, each process that imported tunery prints where it came from, so the test sees what the ranks ran.
# One os.write per report, on a line of its own: the ranks share the (unbuffered) stdout pipe, and print()'s
# separate writes interleave. Guarded: Python 3.11's site reads a venv's .pth files twice.
REPORT_HOOK = (
    "import atexit, os, sys; os.environ.get('TUNERY_REPORT_IMPORT') and not hasattr(sys, '_tunery_report') "
    "and not setattr(sys, '_tunery_report', 1) and atexit.register(lambda: 'tunery' in sys.modules "
    "and os.write(1, ('\\n" + REPORT + " %s %s\\n' % (os.environ.get('RANK', '-'), "
    "sys.modules['tunery'].__file__)).encode()))\n"
)

DRIVER = textwrap.dedent(
    """
    import json, os, sys
    from importlib import resources
    from pathlib import Path

    venv, repo, main_site, job = (Path(p) for p in sys.argv[1:5])
    assert Path(sys.prefix) == venv, sys.prefix
    assert str(main_site) in sys.path, "the main venv's packages should be visible"
    inside = [p for p in sys.path if p and Path(p) != main_site and Path(p).resolve().is_relative_to(repo)]
    assert not inside, f"checkout folders on sys.path: {inside}"
    assert not [m for m in sys.modules if m.startswith("__editable__")], "editable finder was activated"

    import tunery
    from tunery.config import Recipe
    from tunery.layout import RunLayout
    from tunery.training import launch

    assert Path(tunery.__file__).is_relative_to(venv), tunery.__file__
    configs = resources.files("tunery.training").joinpath("zero_configs")
    assert Path(str(configs)).is_relative_to(venv), configs
    assert json.loads(launch.deepspeed_config_text("zero2"))["zero_optimization"]["stage"] == 2

    spec = json.loads((job / "recipe.json").read_text())
    recipe = Recipe.model_validate(spec["recipe"])
    lines = []

    def on_line(line):
        lines.append(line)
        print(line, flush=True)

    model_dir = launch.launch_training(recipe, RunLayout(Path(spec["run_dir"])), on_line=on_line)
    (job / "lines.json").write_text(json.dumps({"lines": lines, "model_dir": str(model_dir)}))
    """
)


def run(cmd: list[str], **kwargs) -> str:
    """Run a command; on failure, fail with its output (CalledProcessError would hide it)."""
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return result.stdout


def build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir(parents=True)
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-w", str(dist), str(src)]
    )
    (wheel,) = dist.glob("tunery-*.whl")
    return wheel


def make_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    # installed before the main venv is made visible: pip must not see the checkout's editable tunery
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index"]
        + ["--no-cache-dir", "--disable-pip-version-check", str(wheel)]
    )
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (site / "zz_main_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (site / "zz_report_tunery_import.pth").write_text(REPORT_HOOK)
    return venv


def clean_env(venv: Path) -> dict[str, str]:
    keep = ("HOME", "LANG", "TMPDIR", "USER", "HF_HOME", "TUNERY_CACHE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(REPO))]
    env.update(
        PATH=os.pathsep.join([str(venv / "bin"), *path]),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        TORCH_EXTENSIONS_DIR=os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(REPO / ".tunery" / "torch_extensions")
        ),
        DS_ACCELERATOR="cpu",
        CUDA_VISIBLE_DEVICES="",  # a CPU job (gloo) even on a machine with a GPU
        TUNERY_REPORT_IMPORT="1",
    )
    return env


def test_wheel_installed_outside_the_checkout_runs_a_two_process_job(tiny_bert, tmp_path):
    wheel = build_wheel(tmp_path / "build")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f"tunery/training/zero_configs/{p.name}" for p in (REPO / "tunery/training/zero_configs").glob("*")
    }
    assert "tunery/training/zero_configs/zero2.json" in configs <= names
    assert "tunery/training/worker.py" in names
    sources = {
        str(p.relative_to(REPO)) for name in ("tunery", "tasks", "flows") for p in (REPO / name).rglob("*.py")
    }
    assert sources <= names, f"modules missing from the wheel: {sorted(sources - names)}"

    venv = make_venv(tmp_path, wheel)
    python = venv / "bin" / "python"
    job = tmp_path / "job"
    recipe = recipe_for(tiny_bert, "full", job, max_steps=4, logging_steps=2, save_steps=100)
    recipe = recipe.model_copy(
        update={
            "distributed": recipe.distributed.model_copy(update={"num_processes": 2, "deepspeed": "zero2"})
        }
    )
    layout = write_splits(job)
    (job / "recipe.json").write_text(
        json.dumps({"recipe": recipe.model_dump(mode="json"), "run_dir": str(layout.root)})
    )
    (job / "driver.py").write_text(DRIVER)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert not outside.resolve().is_relative_to(REPO)

    args = [
        str(python),
        str(job / "driver.py"),
        str(venv),
        str(REPO),
        sysconfig.get_paths()["purelib"],
        str(job),
    ]
    run(args, cwd=outside, env=clean_env(venv), timeout=600)

    out = json.loads((job / "lines.json").read_text())
    lines = out["lines"]
    summary = json.loads((layout.train_dir / "metrics.json").read_text())
    assert summary["world_size"] == 2 and summary["global_steps"] == 4
    assert {p.name for p in (layout.train_dir / "pids").glob("*.pid")} == {"rank0.pid", "rank1.pid"}
    assert Path(out["model_dir"]) == layout.model_dir
    assert (layout.model_dir / "model.safetensors").is_file()

    (launcher,) = [line for line in lines if line.startswith("tunery: launching ")]
    assert launcher.split()[2] == str(python), launcher
    assert "-m deepspeed.launcher.launch" in launcher and "--module tunery.training.worker" in launcher
    # DeepSpeed's per-node launcher started each rank as `<venv python> -u -m tunery.training.worker SPEC`
    spawned = [line for line in lines if "spawned with command:" in line]
    assert len(spawned) == 2, lines[:40]
    assert all(f"['{python}', '-u', '-m', 'tunery.training.worker'," in line for line in spawned), spawned
    # each rank reported the tunery it imported: the wheel's (the launcher processes import no tunery)
    reports = [line.split(" ", 2)[1:] for line in lines if line.startswith(REPORT)]
    assert sorted(rank for rank, _ in reports) == ["0", "1"], lines[-40:]
    reports = dict(reports)
    assert all(Path(f).is_relative_to(venv) for f in reports.values()), reports
