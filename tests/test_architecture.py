"""The shape of the house (docs/architecture.md): a short top level, stage packages that import only what
their ``__init__`` says, no module over 600 lines, no private name imported across modules, and a pipeline
that runs without Prefect."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "tunery"
TOP_LEVEL_LIMIT = 10
LINE_LIMIT = 600

# Which top-level parts of tunery each part may import (besides itself). cli is the edge: anything.
ALLOWED = {
    "config": set(),
    "layout": set(),
    "plotting": set(),
    "reference": {"config"},
    "models": {"layout"},
    "tracking": {"config", "layout", "ops"},
    "ops": set(),
    "demo": set(),
    "data": {"config", "layout", "models", "ops", "plotting"},
    "training": {"config", "layout", "models", "ops", "tracking", "data"},
    "serving": {"config", "layout", "data", "ops", "tracking", "training"},
    "evaluation": {"config", "layout", "models", "plotting", "serving", "training", "data"},
    "registry": {"config", "evaluation", "layout", "serving", "tracking", "training"},
    "continual": {"config", "layout", "models", "data", "registry", "plotting", "ops"},
    "search": {"config", "layout", "ops", "tracking", "training"},
    "pipeline": {
        "config",
        "layout",
        "data",
        "ops",
        "training",
        "evaluation",
        "registry",
        "tracking",
        "search",
    },
}


def python_files(*roots: str) -> list[Path]:
    return sorted(p for root in roots for p in (REPO / root).rglob("*.py"))


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import statement in a file ([] names for ``import x``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def part_of(path: Path) -> str:
    """The top-level part of tunery a library file belongs to: its package, or its module's name."""
    return path.relative_to(LIBRARY).with_suffix("").parts[0]


def test_top_level_is_short():
    modules = sorted(p.name for p in LIBRARY.glob("*.py"))
    assert len(modules) <= TOP_LEVEL_LIMIT, modules


@pytest.mark.parametrize("path", python_files("tunery"), ids=lambda p: str(p.relative_to(REPO)))
def test_no_library_module_is_over_the_line_limit(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= LINE_LIMIT, f"{path.relative_to(REPO)} has {lines} lines"


def test_no_private_name_is_imported_across_modules():
    offences = []
    for path in python_files("tunery", "tasks", "flows", "tests", "benchmarks"):
        for module, names in imports(path):
            private_module = any(
                part.startswith("_") and not part.startswith("__") for part in module.split(".")
            )
            private_names = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private_module or private_names:
                offences.append(f"{path.relative_to(REPO)}: {module} {private_names}")
    assert not offences, offences


def test_each_part_imports_only_what_it_may():
    offences = []
    for path in python_files("tunery"):
        part = part_of(path)
        if part in ("__init__", "cli"):
            continue
        for module, names in imports(path):
            if module != "tunery" and not module.startswith("tunery."):
                continue
            targets = [module.split(".")[1]] if module != "tunery" else names
            for target in targets:
                if target != part and target not in ALLOWED[part]:
                    offences.append(f"{path.relative_to(REPO)} imports tunery.{target}")
    assert not offences, offences


def test_every_package_says_what_it_owns_and_may_import():
    for init in LIBRARY.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "May import" in doc, f"{init.relative_to(REPO)} does not say what it may import"


def test_the_pipeline_runs_without_prefect():
    code = (
        "import sys, tunery.pipeline; print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_flow_reaches_each_stage_through_the_pipeline_module():
    """flows/finetune.py names every stage; each task calls into tunery (a reader follows one hop)."""
    flow = (REPO / "flows" / "finetune.py").read_text(encoding="utf-8")
    for task in (
        "ingest_data",
        "clean_data",
        "split_data",
        "train_model",
        "evaluate_model",
        "register_model",
    ):
        assert task in flow, task


def test_the_worker_the_launcher_starts_is_the_module_that_trains():
    from tunery.training import launch, worker

    assert worker.__name__ == launch.WORKER_MODULE
    assert ("tunery.training.loop", ["train"]) in imports(Path(worker.__file__))
