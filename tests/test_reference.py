"""The recipe reference an installed user sees: docs/recipe.md, `tunery recipe`, its schema and examples."""

from __future__ import annotations

import json
import typing

import pytest

from tests.conftest import REPO
from tests.test_cli import tunery
from tunery import reference
from tunery.config import Recipe, RecipeError, load_recipe


def test_docs_recipe_md_is_up_to_date():
    committed = (REPO / "docs" / "recipe.md").read_text(encoding="utf-8")
    assert committed == reference.reference_markdown(), (
        f"docs/recipe.md is stale; regenerate it with `{reference.REGENERATE}`"
    )
    assert reference.REGENERATE in committed.splitlines()[0]


def test_reference_is_deterministic():
    assert reference.reference_markdown() == reference.reference_markdown()


def test_every_leaf_field_is_in_the_reference_with_a_description():
    text = reference.reference_markdown()
    leaves = reference.leaf_fields()
    assert {"name", "data.source", "method.lora.r", "evaluation.gate.primary_metric"} <= set(leaves)
    assert "continuous.drift.action" in leaves and "method.lora" not in leaves
    rows = {line.split(" | ")[0].removeprefix("| ").strip("`"): line for line in text.splitlines()}
    for dotted, field in leaves.items():
        assert field.description and field.description.strip(), f"{dotted} has no description"
        assert dotted in rows, f"{dotted} is missing from the reference"
        cells = [c.strip() for c in rows[dotted].strip("|").split(" | ")]
        assert len(cells) == 4 and all(cells), f"{dotted}: {rows[dotted]}"


def test_reference_shows_types_defaults_and_required_fields():
    rows = {line.split(" | ")[0]: line for line in reference.reference_markdown().splitlines()}
    assert "| required |" in rows["| `data.source`"]
    assert "| required |" in rows["| `mlflow.registered_model`"]
    assert "one of `full`, `lora`, `qlora`" in rows["| `method.name`"]
    assert "| `full` |" in rows["| `method.name`"]
    assert "integer, >= 1, or null | `null`" in rows["| `training.eval_steps`"]
    assert "list of strings, not empty | `[text]`" in rows["| `data.text_columns`"]
    assert "| `5.0e-05` |" in rows["| `training.learning_rate`"]
    assert "mapping of string to string, or null" in rows["| `data.label_names`"]


@pytest.mark.parametrize("task", [*typing.get_args(Recipe.model_fields["task"].annotation), "chat"])
def test_each_example_recipe_validates(tmp_path, task):
    result = tunery("recipe", "--example", task)
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference.example_recipe(task)
    assert result.stdout.startswith(f"# tunery run {task}.yaml\n")
    path = tmp_path / f"{task}.yaml"
    path.write_text(result.stdout)
    recipe = load_recipe(path)
    assert recipe.task == {"chat": "sft"}.get(task, task)
    bases = {"classification": "minilm", "sft": "smollm2", "chat": "smollm2", "preference": "smollm2"}
    assert recipe.model.base == bases[task]
    assert (recipe.data.conversation is not None) == (task == "chat")


def test_unknown_example_task_is_one_clear_error():
    result = tunery("recipe", "--example", "regression")
    assert result.returncode == 2
    assert result.stderr.startswith("error: no example for task 'regression'")


def test_cli_schema_is_json_with_the_recipe_properties():
    result = tunery("recipe", "--schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema == reference.json_schema()
    assert set(schema["properties"]) == set(Recipe.model_fields)
    assert {"name", "data", "mlflow"} <= set(schema["required"])


def test_cli_recipe_prints_the_reference():
    result = tunery("recipe")
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference.reference_markdown()


def test_unknown_key_error_points_to_the_reference(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ndata: {source: d.csv}\nmlflow: {registered_model: m}\ntrainig: {epochs: 1}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert "trainig: unknown key" in str(err.value)
    assert "`tunery recipe`" in str(err.value) and "docs/recipe.md" in str(err.value)
