from __future__ import annotations

import textwrap

import pytest

from tunery.config import Recipe, RecipeError, apply_overrides, load_recipe, resolve_paths

MINIMAL = """
name: demo
data:
  source: data.csv
mlflow:
  registered_model: demo-model
"""


def write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_recipe_gets_documented_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL))
    assert recipe.task == "classification"
    assert recipe.model.base == "minilm"
    assert recipe.method.name == "full"
    assert (recipe.split.train, recipe.split.validation, recipe.split.test) == (0.70, 0.15, 0.15)
    assert recipe.evaluation.gate.metric(recipe.task) == "macro_f1"


def test_shipped_recipes_validate():
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert recipes, "configs/ must hold at least the demo recipe"
    for path in recipes:
        assert isinstance(load_recipe(path), Recipe)
        assert path.read_text().startswith("# tunery "), f"{path} must open with the command that runs it"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        (
            "method.name=magic",
            "method.name: Input should be 'full', 'lora', 'qlora', "
            "'prompt_tuning', 'p_tuning', 'prefix_tuning' or 'ia3'",
        ),
        ("training.epochs=lots", "training.epochs"),
        ("training.learning_rate=-1", "training.learning_rate"),
        ("trainig.epochs=1", "trainig: unknown key"),
        ("split.train=0.9", "split fractions must sum to 1.0"),
        ("evaluation.gate.primary_metric=loss", "evaluation.gate.primary_metric"),
        ("mlflow.registered_model=a@b", "mlflow.registered_model"),
        ("training.epochs=.inf", "training.epochs: Input should be a finite number"),
        ("training.epochs=.nan", "training.epochs: Input should be a finite number"),
        ("training.learning_rate=.nan", "training.learning_rate: Input should be a finite number"),
        ("distributed.timeout_minutes=.inf", "distributed.timeout_minutes: Input should be a finite number"),
        ("cleaning.max_quarantine_fraction=.nan", "cleaning.max_quarantine_fraction"),
    ],
)
def test_bad_values_fail_naming_the_field(tmp_path, override, fragment):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, MINIMAL), [override])
    assert fragment in str(err.value)


def test_missing_required_section_is_named(tmp_path):
    with pytest.raises(RecipeError, match="mlflow: required field is missing"):
        load_recipe(write(tmp_path, "name: x\ndata: {source: a.csv}\n"))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("name: [unclosed\n", "not valid YAML"), ("- a\n- b\n", "must be a YAML mapping")],
)
def test_unreadable_recipe_files(tmp_path, text, fragment):
    with pytest.raises(RecipeError, match=fragment):
        load_recipe(write(tmp_path, text))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_overrides_are_typed_and_nested():
    raw = {"training": {"epochs": 3}}
    out = apply_overrides(raw, ["training.epochs=1.5", "method.lora.target_modules=[query, key]", "name=x"])
    assert out["training"]["epochs"] == 1.5
    assert out["method"]["lora"]["target_modules"] == ["query", "key"]
    assert raw == {"training": {"epochs": 3}}, "the input mapping must not be modified"


@pytest.mark.parametrize("bad", ["no-equals-sign", "=1", "name.sub=1"])
def test_malformed_overrides(bad):
    with pytest.raises(RecipeError, match="override"):
        apply_overrides({"name": "x"}, [bad])


def test_resolve_paths_anchors_local_paths_only(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL))
    resolved = resolve_paths(recipe, tmp_path)
    assert resolved.data.source == str(tmp_path / "data.csv")
    assert resolved.workdir == str(tmp_path / ".tunery")
    remote = resolve_paths(
        recipe.model_copy(update={"data": recipe.data.model_copy(update={"source": "s3://b/x.csv"})}),
        tmp_path,
    )
    assert remote.data.source == "s3://b/x.csv"


def test_digest_changes_with_content(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL))
    other = load_recipe(write(tmp_path, MINIMAL), ["training.epochs=1"])
    assert recipe.digest() == load_recipe(write(tmp_path, MINIMAL)).digest()
    assert recipe.digest() != other.digest()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["method.name=prefix_tuning", "distributed.deepspeed=zero3"], "does not support DeepSpeed ZeRO-3"),
        (
            ["method.name=qlora", "distributed.deepspeed=zero3_offload"],
            "cannot be combined with DeepSpeed ZeRO-3",
        ),
        (["task=sft", "training.early_stopping_metric=macro_f1"], "must be 'loss' for task sft"),
        (["sft.packing=true"], "only applies to task sft"),
        (["distributed.hostfile=hosts"], "needs a DeepSpeed config"),
        (["continuous.forgetting_metric=perplexity"], "needs task sft"),
        (["continuous.drift.action=ignore"], "continuous.drift.action"),
        (["continuous.drift.auc_threshold=0.4"], "continuous.drift.auc_threshold"),
    ],
)
def test_impossible_combinations_fail_before_any_work(tmp_path, overrides, fragment):
    with pytest.raises(RecipeError, match=fragment):
        load_recipe(write(tmp_path, MINIMAL), overrides)


def test_continuous_drop_zone_defaults_to_the_data_source_and_is_anchored(tmp_path):
    from tunery.continual.drops import zone_uri

    recipe = resolve_paths(load_recipe(write(tmp_path, MINIMAL), ["continuous.settle_seconds=1"]), tmp_path)
    assert zone_uri(recipe) == str(tmp_path / "data.csv")
    zoned = resolve_paths(load_recipe(write(tmp_path, MINIMAL), ["continuous.drop_zone=drops"]), tmp_path)
    assert zone_uri(zoned) == str(tmp_path / "drops")
    remote = resolve_paths(
        load_recipe(write(tmp_path, MINIMAL), ["continuous.drop_zone=s3://b/in"]), tmp_path
    )
    assert zone_uri(remote) == "s3://b/in"
    with pytest.raises(ValueError, match="no `continuous` section"):
        zone_uri(load_recipe(write(tmp_path, MINIMAL)))
