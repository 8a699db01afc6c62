"""The recipe: one typed, validated description of a fine-tuning job.

A recipe is a YAML file that is a saved instance of :class:`Recipe`. Every section forbids unknown keys so
that a typo (``trainig:``) fails before any work starts, with a message that names the field. Dotted
``key=value`` overrides from the command line are applied to the raw mapping *before* validation, so an
override is checked exactly like a value in the file.

The sections live in ``base`` (what every section shares), ``data`` (data, conversation, cleaning and
split) and ``evaluation`` (evaluation sets, benchmarks, the judge and the gate); the model, training and
tracking sections and :class:`Recipe` are here.

May import: nothing else of tunery (every other part reads the recipe).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tunery.config.base import RecipeError, Section
from tunery.config.cost import CostConfig
from tunery.config.data import (
    CleaningConfig,
    ConversationConfig,
    DataConfig,
    HeldOutSource,
    SplitConfig,
    held_out_source,
)
from tunery.config.evaluation import (
    CLASSIFICATION_METRICS,
    COST_GUARDS,
    JUDGE_GUARD,
    PREFERENCE_METRICS,
    SFT_METRICS,
    BenchmarkConfig,
    CustomTaskConfig,
    EvaluationConfig,
    GateConfig,
    GuardConfig,
    JudgeConfig,
    check_evaluation,
)
from tunery.config.overrides import apply_overrides
from tunery.config.search import SearchConfig, check_space

# the sections live in submodules; `from tunery.config import DataConfig` is their public address
__all__ = [
    "apply_overrides",
    "CostConfig",
    "CLASSIFICATION_METRICS",
    "COST_GUARDS",
    "JUDGE_GUARD",
    "PREFERENCE_METRICS",
    "SFT_METRICS",
    "BenchmarkConfig",
    "CleaningConfig",
    "ConversationConfig",
    "CustomTaskConfig",
    "DataConfig",
    "EvaluationConfig",
    "GateConfig",
    "GuardConfig",
    "HeldOutSource",
    "JudgeConfig",
    "Recipe",
    "RecipeError",
    "SplitConfig",
    "held_out_source",
    "SearchConfig",
]


class ModelConfig(Section):
    """The pretrained model to start from."""

    base: str = Field(
        "minilm",
        description="A catalogue name (see `tunery.models.CATALOGUE`), a local folder, or a hub id.",
    )
    max_length: int = Field(128, ge=8, le=8192, description="Maximum tokens per example (truncation).")
    init_from: str | None = Field(
        None,
        description="Start training from these weights instead of `base` (a model folder exported by tunery "
        "for the same task and labels, e.g. the champion's: warm start). Baselines still use `base`.",
    )


class LoraConfig(Section):
    """LoRA adapters (methods lora and qlora): trainable low-rank updates of the target modules."""

    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the input of the LoRA layers.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; default chosen per architecture."
    )


class PromptLearningConfig(Section):
    """prompt_tuning, p_tuning and prefix_tuning: trainable virtual tokens in front of the input."""

    num_virtual_tokens: int = Field(20, ge=1, le=512, description="Number of trainable virtual tokens.")
    init_text: str | None = Field(
        None, description="prompt_tuning only: initialise the virtual tokens from this text."
    )
    encoder_hidden_size: int = Field(128, ge=1, description="p_tuning only: prompt encoder width.")


class Ia3Config(Section):
    """IA3 (method ia3): learned vectors that rescale attention and feed-forward activations."""

    target_modules: list[str] | None = Field(
        None, description="Module names to rescale; default chosen per architecture."
    )
    feedforward_modules: list[str] | None = Field(
        None,
        description="Which of `target_modules` are feed-forward layers; default chosen per architecture.",
    )


class QuantizationConfig(Section):
    """qlora: the base model is loaded in 4 bits (bitsandbytes, CUDA only) and LoRA trains on top."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type: NormalFloat4 or FP4.")
    double_quant: bool = Field(
        True, description="Quantise the quantisation constants too (saves about 0.4 bits per parameter)."
    )


METHODS = ("full", "lora", "qlora", "prompt_tuning", "p_tuning", "prefix_tuning", "ia3")
PEFT_PROMPT_METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning")


class MethodConfig(Section):
    """How the model is adapted: full fine-tuning or a PEFT method, with each method's settings."""

    name: Literal["full", "lora", "qlora", "prompt_tuning", "p_tuning", "prefix_tuning", "ia3"] = Field(
        "full", description="Fine-tuning method."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="lora and qlora settings.")
    prompt: PromptLearningConfig = Field(default_factory=PromptLearningConfig)
    ia3: Ia3Config = Field(default_factory=Ia3Config)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)


class TrainingConfig(Section):
    """Optimisation, checkpoints and early stopping (a Hugging Face Trainer run)."""

    epochs: float = Field(3.0, gt=0.0, description="Training epochs (may be fractional).")
    max_steps: int = Field(-1, description="If > 0, stop after this many optimiser steps (overrides epochs).")
    batch_size: int = Field(16, ge=1, description="Per-process training batch size.")
    eval_batch_size: int = Field(64, ge=1, description="Per-process evaluation batch size.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Batches per optimiser step (effective batch: batch_size x this x processes)."
    )
    learning_rate: float = Field(5e-5, gt=0.0, lt=1.0, description="Peak learning rate (after warmup).")
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warmup."
    )
    weight_decay: float = Field(0.01, ge=0.0, description="Weight decay of the AdamW optimiser.")
    warmup_ratio: float = Field(
        0.06, ge=0.0, lt=1.0, description="Fraction of the training steps spent ramping the learning rate up."
    )
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping by global norm.")
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="Override the model's dropout probabilities (null: keep)."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="fp16 needs a CUDA GPU; bf16 a GPU with bfloat16 support, or a CPU with native "
        "bfloat16 (AVX512-BF16, AMX: autocast, without DeepSpeed).",
    )
    seed: int = Field(42, description="Seed of weight initialisation, dropout and data order.")
    logging_steps: int = Field(10, ge=1, description="Log loss and learning rate every N optimiser steps.")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps (null: every epoch).")
    group_by_length: bool = Field(
        False,
        description="Batch examples of similar length: less padding, ~2x the samples/s on short texts, but "
        "batches that are no longer random samples (on SST-2 it cost 0.9 dev-accuracy points on average "
        "over 8 seeds, 4 points on one; see benchmarks/README.md). Off: random batches, each padded to "
        "its own longest example.",
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improving `early_stopping_metric`."
    )
    early_stopping_metric: Literal["loss", "accuracy", "macro_f1"] = Field(
        "loss", description="Validation metric watched by early stopping (loss for sft)."
    )
    save_steps: int = Field(200, ge=1, description="Write a resumable checkpoint every N optimiser steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk (the newest ones).")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads per process.")


class DistributedConfig(Section):
    """How the training job is launched: always its own process group, never inside the orchestrator."""

    num_processes: int = Field(
        1, ge=1, description="Processes per node (GPUs per node; CPU processes over gloo without GPUs)."
    )
    deepspeed: Literal["none", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"] = Field(
        "none",
        description="DeepSpeed config <name>.json of tunery/training/zero_configs/ ('none': plain DDP).",
    )
    hostfile: str | None = Field(None, description="DeepSpeed hostfile for multi-node jobs.")
    master_port: int | None = Field(
        None, ge=1024, le=65535, description="Rendezvous port (default: a free one)."
    )
    timeout_minutes: float = Field(
        240.0, gt=0.0, description="Kill the training job after this long; the task then fails (and retries)."
    )


class SftConfig(Section):
    """Instruction tuning (task: sft)."""

    packing: bool = Field(False, description="Pack several examples into each sequence (no padding).")
    system_prompt: str | None = Field(None, description="System message added to every conversation.")
    generation_max_new_tokens: int = Field(128, ge=1, description="Tokens generated per evaluation answer.")
    repetition_penalty: float = Field(
        1.0,
        ge=1.0,
        le=2.0,
        description=(
            "Penalty on tokens already in the prompt or answer when generating (evaluation and serving; "
            "1.0: off). Small models that loop under greedy decoding (`9999...`) usually stop with 1.1."
        ),
    )


class PreferenceConfig(Section):
    """Preference tuning (task: preference) on TRL's trainers: pairs of a chosen and a rejected answer to one
    prompt (dpo, ipo, orpo), or single answers labelled desirable or not (kto).

    Data formats (``format``): ``trl`` (``prompt``/``chosen``/``rejected``, text or messages), ``openai``
    (``input.messages``, ``preferred_output``, ``non_preferred_output``), ``sharegpt`` (LLaMA-Factory:
    ``conversations`` + ``chosen``/``rejected`` turns), ``messages`` (``chosen_messages`` and
    ``rejected_messages``) and ``kto`` (``messages`` or ``prompt``/``completion``, a boolean ``label``)."""

    objective: Literal["dpo", "ipo", "orpo", "kto"] = Field(
        "dpo",
        description="dpo: direct preference optimisation (sigmoid loss); ipo: DPO's IPO loss; orpo: odds "
        "ratio (no reference model); kto: Kahneman-Tversky (unpaired rows with a label).",
    )
    beta: float = Field(
        0.1,
        gt=0.0,
        le=10.0,
        description="dpo/ipo/kto: strength of the pull towards the reference model; "
        "orpo: weight of the odds-ratio term (TRL's beta, lambda in the paper).",
    )
    format: Literal["auto", "trl", "openai", "sharegpt", "messages", "kto"] = Field(
        "auto", description="Preference data format; 'auto' decides from the columns of each file."
    )
    desirable_weight: float = Field(1.0, gt=0.0, description="kto: loss weight of desirable answers.")
    undesirable_weight: float = Field(1.0, gt=0.0, description="kto: loss weight of undesirable answers.")


REDACTED = "***"  # what a URI shows instead of its password: `user:***@host`


def credentials_to_environment(uri: str) -> str:
    """``uri`` without its password (never kept in a recipe, docs/security.md): http(s) credentials move into
    MLFLOW_TRACKING_USERNAME/PASSWORD; another scheme's URI into MLFLOW_TRACKING_URI (keeps ``user:***@``)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    user, has_password, password = userinfo.partition(":")
    if parts.scheme not in ("http", "https"):  # a database URL: SQLAlchemy needs the password in it
        if password != REDACTED:
            os.environ["MLFLOW_TRACKING_URI"] = uri
        return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))
    if password != REDACTED:  # a redacted copy (a stored flow parameter): the environment has them
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(user)
        os.environ.update({"MLFLOW_TRACKING_PASSWORD": unquote(password)} if has_password else {})
    return urlunsplit(parts._replace(netloc=host))


class MlflowConfig(Section):
    """Where runs are tracked, and the name under which models are registered."""

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: env MLFLOW_TRACKING_URI, else SQLite in the workdir."
    )
    experiment: str = Field("tunery", min_length=1, description="MLflow experiment the runs are logged to.")
    registered_model: str = Field(..., min_length=1, description="Name of the registered model.")

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        return credentials_to_environment(v) if v else v

    @field_validator("registered_model")
    @classmethod
    def _no_alias_chars(cls, v: str) -> str:
        if any(c in v for c in "@/:"):
            raise ValueError("must not contain '@', '/' or ':'")
        return v


class DriftConfig(Section):
    """Drift between a new data drop and the history it joins (continuous learning)."""

    psi_threshold: float = Field(
        0.25, gt=0.0, description="Population stability index above which label or length drift is high."
    )
    vocabulary_psi_threshold: float = Field(
        0.25,
        gt=0.0,
        description="PSI over the history's most frequent words above which vocabulary drift is high.",
    )
    auc_threshold: float = Field(
        0.75,
        gt=0.5,
        le=1.0,
        description="Classifier two-sample test: cross-validated ROC AUC (history vs drop) above which "
        "drift is high.",
    )
    max_rows: int = Field(
        4000, ge=100, description="Rows sampled from each side for every drift measure (bounds the cost)."
    )
    action: Literal["warn", "pause", "block"] = Field(
        "warn",
        description="On high drift: warn and go on; pause for a human decision in the Prefect UI; "
        "or block (the drop is rejected and not trained on).",
    )
    pause_timeout_minutes: float = Field(
        24 * 60.0,
        gt=0.0,
        description="action pause: how long to wait for the decision; then the drop is rejected.",
    )
    seed: int = Field(0, description="Seed of the two-sample test's sampling and folds.")


class ContinuousConfig(Section):
    """Continuous learning: retrain from files dropped into a folder or bucket."""

    drop_zone: str | None = Field(
        None, description="Folder or fsspec URI watched for new data files (default: `data.source`)."
    )
    patterns: list[str] = Field(
        default_factory=lambda: ["*.csv", "*.tsv", "*.json", "*.jsonl", "*.parquet"],
        min_length=1,
        description="File name patterns of drops at the top of the zone (folder drops: see `_SUCCESS`).",
    )
    settle_seconds: float = Field(
        5.0,
        ge=0.0,
        description="A file is taken only when unchanged for this long (guards writers that cannot rename).",
    )
    reannounce_seconds: float = Field(
        300.0, gt=0.0, description="Announce drops again when still pending after this long (a lost event)."
    )
    warm_start: Literal["champion", "base"] = Field(
        "champion", description="Start each retrain from the champion's weights, or from `model.base`."
    )
    forgetting_metric: Literal["auto", "perplexity", "rouge_l"] = Field(
        "auto",
        description=(
            "Metric of the forgetting check on earlier drops' test rows. auto: the gate's primary metric "
            "(classification, preference), perplexity (sft). sft may choose rouge_l (generates replies: "
            "slower)."
        ),
    )
    forgetting_margin: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description=(
            "Gate: no earlier drop's test rows may score worse than the champion by more than this: an "
            "absolute drop of the metric, or for perplexity a relative rise (0.02 = 2% higher)."
        ),
    )
    drift: DriftConfig = Field(default_factory=DriftConfig)


class Recipe(Section):
    """A complete fine-tuning recipe."""

    name: str = Field(..., min_length=1, description="Short name of the job, used in run names.")
    task: Literal["classification", "sft", "preference"] = Field(
        "classification",
        description="classification: an encoder learns labels; sft: a decoder learns to answer instructions; "
        "preference: a decoder (an SFT model, usually) learns which of two answers people prefer.",
    )
    data: DataConfig
    cleaning: CleaningConfig = Field(default_factory=CleaningConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    search: SearchConfig | None = Field(
        None, description="A hyperparameter search over recipe fields (`tunery search`; docs/search.md)."
    )
    continuous: ContinuousConfig | None = Field(
        None, description="Continuous learning from a drop zone (the `continuous-learning` flow)."
    )
    mlflow: MlflowConfig
    workdir: str = Field(".tunery", description="Folder for run outputs and the default MLflow store.")

    @model_validator(mode="after")
    def _combinations(self) -> Recipe:
        """Reject combinations that cannot work, before any data is read or any GPU is touched."""
        method, ds = self.method.name, self.distributed.deepspeed
        if ds.startswith("zero3") and method in PEFT_PROMPT_METHODS:
            raise ValueError(f"`method.name: {method}` does not support DeepSpeed ZeRO-3; use zero1 or zero2")
        if ds.startswith("zero3") and method == "qlora":
            raise ValueError("`method.name: qlora` cannot be combined with DeepSpeed ZeRO-3 (4-bit weights)")
        metric = self.evaluation.gate.metric(self.task)
        allowed = {"sft": SFT_METRICS, "preference": PREFERENCE_METRICS}.get(
            self.task, CLASSIFICATION_METRICS
        )
        if metric not in allowed:
            raise ValueError(
                f"`evaluation.gate.primary_metric: {metric}` does not apply to task {self.task}; "
                f"use one of {', '.join(allowed)}"
            )
        if self.task != "classification" and self.training.early_stopping_metric != "loss":
            raise ValueError(f"`training.early_stopping_metric` must be 'loss' for task {self.task}")
        if self.task != "sft" and self.sft.packing:
            raise ValueError("`sft.packing` only applies to task sft")
        if self.task == "preference":
            self._check_preference()
        check_evaluation(self.task, self.data, self.evaluation, self.continuous is not None)
        if self.search is not None:
            check_space(type(self), self)
        if self.task != "sft" and self.data.conversation is not None:
            raise ValueError("`data.conversation` (conversation data) needs `task: sft`")
        if (
            self.continuous is not None
            and self.task == "classification"
            and self.continuous.forgetting_metric in ("perplexity", "rouge_l")
        ):
            raise ValueError(
                f"`continuous.forgetting_metric: {self.continuous.forgetting_metric}` needs task sft "
                "(classification checks forgetting on the gate's primary metric: use auto)"
            )
        if self.distributed.hostfile and ds == "none":
            raise ValueError(
                "`distributed.hostfile` (multi-node) needs a DeepSpeed config in `distributed.deepspeed`"
            )
        return self

    def _check_preference(self) -> None:
        """What TRL's preference trainers cannot do with this recipe, said before any data is read."""
        method, ds = self.method.name, self.distributed.deepspeed
        if method in PEFT_PROMPT_METHODS:
            raise ValueError(
                f"`method.name: {method}` cannot be preference-tuned (TRL scores answers without virtual "
                "tokens); use lora, qlora, ia3 or full"
            )
        reference = self.preference.objective != "orpo"
        if method == "full" and reference and ds.startswith("zero3"):
            raise ValueError(
                f"`preference.objective: {self.preference.objective}` with `method.name: full` needs an "
                "explicit reference model (a second full copy), which tunery does not run under ZeRO-3: use "
                "method lora (the adapter-disabled model is the reference, no copy), objective orpo (no "
                "reference), or zero2"
            )
        if self.preference.objective == "kto" and self.training.batch_size < 2:
            raise ValueError(
                "`preference.objective: kto` needs `training.batch_size` >= 2 (its KL estimate pairs each "
                "answer with another prompt of the same batch)"
            )
        if self.continuous is not None and self.continuous.forgetting_metric != "auto":
            raise ValueError(
                f"`continuous.forgetting_metric: {self.continuous.forgetting_metric}` needs task sft "
                "(preference checks forgetting on preference accuracy: use auto)"
            )

    def digest(self) -> str:
        """A short content hash of the recipe, stable across key order."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid recipe {origin}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; the recipe format: `tunery recipe`, or docs/recipe.md)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe file.

    Relative ``data.source`` and ``workdir`` stay as written; :func:`resolve_paths` anchors them.

    Raises:
        RecipeError: the file is missing, is not YAML, or does not validate. The message names the field.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {path} is not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path} must be a YAML mapping, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(_format_validation_error(err, str(path))) from None


def resolve_paths(recipe: Recipe, base_dir: str | Path) -> Recipe:
    """Return a copy whose local relative paths (data sources, evaluation sets and benchmark files, workdir,
    drop zone) are anchored at ``base_dir``."""
    base = Path(base_dir)
    update: dict[str, Any] = {}
    src = recipe.data.source
    if "://" not in src and not Path(src).is_absolute():
        update["data"] = recipe.data.model_copy(update={"source": str((base / src).resolve())})
    if not Path(recipe.workdir).is_absolute():
        update["workdir"] = str((base / recipe.workdir).resolve())

    def anchored(path: str | None) -> str | None:
        if path is None or "://" in path or Path(path).is_absolute():
            return path
        return str((base / path).resolve())

    def anchored_set(value: str | HeldOutSource | None) -> str | HeldOutSource | None:
        if isinstance(value, HeldOutSource):
            return value.model_copy(update={"source": anchored(value.source)})
        return anchored(value)

    data = update.get("data", recipe.data)
    held_out = {
        "test_source": anchored_set(data.test_source),
        "validation_source": anchored_set(data.validation_source),
    }
    update["data"] = data.model_copy(update=held_out)
    evaluation = recipe.evaluation
    sets = {name: anchored_set(source) for name, source in evaluation.sets.items()}
    benchmarks = evaluation.benchmarks
    if benchmarks is not None:
        custom = [task.model_copy(update={"path": anchored(task.path)}) for task in benchmarks.custom]
        benchmarks = benchmarks.model_copy(update={"custom": custom})
    update["evaluation"] = evaluation.model_copy(update={"sets": sets, "benchmarks": benchmarks})
    zone = recipe.continuous.drop_zone if recipe.continuous else None
    if zone and "://" not in zone and not Path(zone).is_absolute():
        anchored = str((base / zone).resolve())
        update["continuous"] = recipe.continuous.model_copy(update={"drop_zone": anchored})
    return recipe.model_copy(update=update)
