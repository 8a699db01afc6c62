"""The recipe reference, generated from :class:`tunery.config.Recipe`: markdown, JSON schema, examples.

``tunery recipe`` prints these for an installed user, who has no ``tunery/config/`` to read;
``docs/recipe.md`` is the same markdown, kept in sync by a test. Regenerate it with::

    python -m tunery.reference > docs/recipe.md

The output depends only on the recipe schema, so it is the same on every machine and every run.
"""

from __future__ import annotations

import inspect
import math
import sys
import types
import typing
from typing import Any, Literal, Union

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tunery.config import Recipe

REGENERATE = "python -m tunery.reference > docs/recipe.md"

EXAMPLES: dict[str, str] = {
    "classification": """\
# tunery run classification.yaml
# A starting recipe: `tunery recipe --example classification > classification.yaml`. Point data.source
# at your data, then `tunery validate classification.yaml`. Every field: `tunery recipe` (docs/recipe.md).
name: my-classifier
task: classification
data:
  source: data/my-data.csv           # path, glob, or fsspec URI, relative to the current directory
  text_columns: [text]               # several columns are joined with data.text_separator
  label_column: label
  labels: null                       # or a list, e.g. [billing, network]: other labels are quarantined
  test_source: null                  # or your own frozen test file: scored whole, never split
cleaning:
  max_chars: 4000
  max_quarantine_fraction: 0.2       # fail the run when more rows than this are quarantined
split: {train: 0.7, validation: 0.15, test: 0.15, seed: 42}
model:
  base: minilm                       # the packaged MiniLM encoder; or a local folder / hub id
  max_length: 128
method:
  name: full                         # full | lora | qlora | prompt_tuning | p_tuning | prefix_tuning | ia3
training:
  epochs: 3
  batch_size: 16
  learning_rate: 5.0e-5
evaluation:
  sets: {}                           # named evaluation sets, e.g. {golden: data/golden.csv}
  gate:
    primary_metric: macro_f1
    min_improvement: 0.0
    baseline_floor: true             # never champion below the strongest baseline (TF-IDF, linear probe)
    guards: []                       # must not regress, e.g. [{metric: "recall:urgent", margin: 0.02}]
mlflow:
  experiment: my-classifier
  registered_model: my-classifier
""",
    "sft": """\
# tunery run sft.yaml
# A starting recipe: `tunery recipe --example sft > sft.yaml`. Point data.source at instruction data
# (instruction, optional input, output columns), then `tunery validate sft.yaml`. Every field:
# `tunery recipe` (docs/recipe.md).
name: my-assistant
task: sft
data:
  source: data/my-instructions.jsonl # path, glob, or fsspec URI, relative to the current directory
  instruction_column: instruction
  input_column: input                # optional context; may be missing or empty
  answer_columns: [output, response] # the first one present in a record is the answer
model:
  base: smollm2                      # the packaged SmolLM2 decoder; or a local folder / hub id
  max_length: 512
method:
  name: lora
  lora: {r: 8, alpha: 16, dropout: 0.05}
training:
  epochs: 2
  batch_size: 8
  learning_rate: 2.0e-4
  early_stopping_metric: loss        # sft: the only choice
sft:
  packing: false
  system_prompt: null                # or a system message added to every conversation
  generation_max_new_tokens: 128
evaluation:
  generation_samples: null           # all test rows; or the first N
  gate: {primary_metric: rouge_l, min_improvement: 0.0}
mlflow:
  experiment: my-assistant
  registered_model: my-assistant
""",
    "chat": """\
# tunery run chat.yaml
# A starting recipe: `tunery recipe --example chat > chat.yaml`. Point data.source at conversations
# (OpenAI chat JSONL, ShareGPT, LIMA or alpaca with history; detected per file), then
# `tunery validate chat.yaml`. Every field: `tunery recipe` (docs/recipe.md).
name: my-chat-assistant
task: sft
data:
  source: data/my-chats/             # files, a glob, or an fsspec URI
  conversation:
    format: auto                     # openai | sharegpt | lima | alpaca | auto
    roles: {}                        # your role names -> system/user/assistant/tool, e.g. {bot: assistant}
    train_on: all                    # all assistant turns (weight 1), or last
    too_long: drop_oldest            # or quarantine
model:
  base: smollm2                      # its chat template is used for training and serving
  max_length: 1024
method:
  name: lora
  lora: {r: 8, alpha: 16, dropout: 0.05}
training:
  epochs: 2
  batch_size: 8
  learning_rate: 2.0e-4
sft:
  packing: true                      # packed conversations never attend to each other
  generation_max_new_tokens: 128
evaluation:
  generation_samples: null           # assistant turns of the test conversations answered (null: all)
  gate: {primary_metric: rouge_l, min_improvement: 0.0}
mlflow:
  experiment: my-chat-assistant
  registered_model: my-chat-assistant
""",
    "preference": """\
# tunery run preference.yaml
# A starting recipe: `tunery recipe --example preference > preference.yaml`. Point data.source at preference
# pairs (TRL prompt/chosen/rejected, OpenAI preference rows, LLaMA-Factory ranking rows or KTO rows with a
# label; detected per file) and model.init_from at your SFT model, then `tunery validate preference.yaml`.
# Every field: `tunery recipe` (docs/recipe.md).
name: my-assistant-dpo
task: preference
data:
  source: data/my-preferences/       # files, a glob, or an fsspec URI
model:
  base: smollm2                      # the tokenizer and chat template; baselines
  max_length: 1024                   # prompt + longer answer; longer pairs are quarantined, never cut
  init_from: null                    # e.g. my-chat-assistant@champion: preference-tune the SFT champion
method:
  name: lora                         # the reference model is this model with its adapters off
  lora: {r: 8, alpha: 16, dropout: 0.05}
training:
  epochs: 1
  batch_size: 4
  learning_rate: 5.0e-5
preference:
  objective: dpo                     # dpo | ipo | orpo | kto
  beta: 0.1
  format: auto                       # trl | openai | sharegpt | messages | kto | auto
evaluation:
  generation_samples: null           # test prompts answered by model and champion side by side (null: all)
  gate: {primary_metric: preference_accuracy, min_improvement: 0.0}
mlflow:
  experiment: my-assistant-dpo
  registered_model: my-assistant-dpo
""",
}

_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def example_recipe(task: str) -> str:
    """A commented starting recipe for ``task`` (``classification``, ``sft``, ``chat``: sft on
    conversations, or ``preference``) that validates as is.

    Raises:
        ValueError: ``task`` has no example.
    """
    try:
        return EXAMPLES[task]
    except KeyError:
        raise ValueError(f"no example for task {task!r}; choose one of {', '.join(EXAMPLES)}") from None


def json_schema() -> dict[str, Any]:
    """The JSON schema of a recipe (for editors, e.g. the YAML language server)."""
    return Recipe.model_json_schema()


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The config model of a field that is a section (``X`` or ``X | None``), else None."""
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _yaml(value: Any) -> str:
    """A value as YAML flow text, the way one would write it in a recipe."""
    if isinstance(value, float) and math.isfinite(value):
        text = repr(value)  # YAML 1.1 needs a dot in the mantissa of an exponent float (5.0e-05)
        if "e" in text and "." not in text.split("e")[0]:
            text = text.replace("e", ".0e")
        return text
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _type_text(annotation: Any, bounds: str = "") -> str:
    """A readable type; ``bounds`` (e.g. ``>= 1``) apply to the value, not to a ``null``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        text = " or ".join(_type_text(a) for a in args if a is not type(None))
        text = f"{text}, {bounds}" if bounds else text
        return f"{text}, or null" if type(None) in args else text
    if bounds:
        return f"{_type_text(annotation)}, {bounds}"
    if origin is Literal:
        return "one of " + ", ".join(f"`{_yaml(a)}`" for a in args)
    if origin is list:
        return f"list of {_type_text(args[0])}s" if args else "list"
    if origin is dict:
        return f"mapping of {_type_text(args[0])} to {_type_text(args[1])}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(field: FieldInfo) -> str:
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    found = []
    for meta in field.metadata:
        for attr, sign in signs.items():
            if isinstance(meta, getattr(annotated_types, attr.capitalize())):
                found.append(f"{sign} {_yaml(getattr(meta, attr))}")
        if isinstance(meta, annotated_types.MinLen) and meta.min_length > 0:
            found.append("not empty" if meta.min_length == 1 else f"length >= {meta.min_length}")
    return " and ".join(found)


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "defaults below"
    return f"`{_yaml(value)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _doc(model: type[BaseModel]) -> str:
    doc = model.__dict__.get("__doc__")
    return " ".join(inspect.cleandoc(doc).split()) if doc else ""


def _summary(field: FieldInfo, model: type[BaseModel]) -> str:
    """One line about a section: the field's description, else the first sentence of the model's doc."""
    return field.description or _doc(model).split(". ")[0].removesuffix(".") + "."


def _sections(model: type[BaseModel], prefix: str) -> list[tuple[str, type[BaseModel], FieldInfo]]:
    """Every section below ``model``, depth first, in declaration order: (dotted name, model, field)."""
    found = []
    for name, field in model.model_fields.items():
        sub = _section_model(field.annotation)
        if sub is not None:
            dotted = f"{prefix}{name}"
            found.append((dotted, sub, field))
            found.extend(_sections(sub, f"{dotted}."))
    return found


def leaf_fields() -> dict[str, FieldInfo]:
    """Every field of a recipe that holds a value (not a section), by dotted name, in recipe order."""
    leaves: dict[str, FieldInfo] = {}
    for prefix, model in [("", Recipe)] + [(f"{d}.", m) for d, m, _ in _sections(Recipe, "")]:
        for name, field in model.model_fields.items():
            if _section_model(field.annotation) is None:
                leaves[f"{prefix}{name}"] = field
    return leaves


def _table(model: type[BaseModel], prefix: str) -> list[str]:
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        sub = _section_model(field.annotation)
        description = field.description or ""
        if sub is not None:
            description = f"{_summary(field, sub)} See `{prefix}{name}` below."
        cells = [f"`{prefix}{name}`", _type_text(field.annotation, _bounds(field)), _default_text(field)]
        cells.append(description)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def reference_markdown() -> str:
    """The recipe reference as markdown: one table per section, every field with type, default, meaning."""
    out = [
        f"<!-- Generated from tunery/config/ by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "# Recipe reference",
        "",
        "A recipe is a YAML file describing one fine-tuning job. Every section rejects unknown keys, so a "
        "typo fails before any work starts, with a message naming the field. Any field can be overridden "
        "on the command line as `dotted.key=value` (e.g. `tunery run my-recipe.yaml training.epochs=1`); "
        "an override is validated like a value in the file. Relative paths are relative to the directory "
        "tunery runs in.",
        "",
        "- `tunery recipe` prints this reference;",
        "- `tunery recipe --example classification` (or `--example sft`) prints a starting recipe;",
        "- `tunery recipe --schema` prints the JSON schema, for editors: save it as `recipe.schema.json` "
        "and start a recipe with `# yaml-language-server: $schema=recipe.schema.json`;",
        "- `tunery validate my-recipe.yaml` checks a recipe (fields, values, combinations, data source).",
        "",
        "A field with the default `required` must be given; all others may be left out.",
        "",
        "## Top level",
        "",
        _doc(Recipe),
        "",
        *_table(Recipe, ""),
    ]
    for dotted, model, field in _sections(Recipe, ""):
        intro = [_doc(model) or field.description or ""]
        if field.is_required():
            intro.append("Required.")
        elif field.get_default(call_default_factory=True) is None:
            intro.append("Optional: off unless the section is given.")
        out += ["", f"## `{dotted}`", "", " ".join(t for t in intro if t), "", *_table(model, f"{dotted}.")]
    out += ["", "## Examples", ""]
    for task, text in EXAMPLES.items():
        out += [f"`tunery recipe --example {task}`:", "", "```yaml", text.rstrip("\n"), "```", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> None:
    sys.stdout.write(reference_markdown())


if __name__ == "__main__":
    main()
