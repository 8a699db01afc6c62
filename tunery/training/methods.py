"""Fine-tuning methods: loading the base model, wrapping it for a method, exporting what was trained.

The methods (``recipe.method.name``) and what leaves training for each:

========================  ==================================  ===========================================
method                    what trains                         exported as (``export_model``)
========================  ==================================  ===========================================
full                      every weight                        ``full``: a plain transformers folder
lora                      low-rank adapters (+ head)          ``merged``: adapters merged into the weights
qlora                     LoRA on a 4-bit base (CUDA only)    ``merged``: into a de-quantised base
ia3                       learned rescaling vectors (+ head)  ``merged``: vectors folded into the weights
prompt_tuning             virtual token embeddings (+ head)   ``adapter``: base + peft adapter (see below)
p_tuning                  prompt encoder MLP (+ head)         ``adapter``
prefix_tuning             per-layer key/value prefixes        ``adapter``
========================  ==================================  ===========================================

Exporting what was trained (merge, adapter folders, the numerical check) is :mod:`tunery.training.export`.

This module never imports torch, transformers or peft at import time, so importing it stays cheap.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.config import Recipe
from tunery.models import default_lora_targets, resolve_model
from tunery.training import compact

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel

# IA3 defaults (target, feedforward) per architecture, used where peft has no default of its own.
IA3_MODULES_BY_ARCH: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bert": (("key", "value", "output.dense"), ("output.dense",)),
    "roberta": (("key", "value", "output.dense"), ("output.dense",)),
    "llama": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "mistral": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "qwen2": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
}

# Config fields holding a dropout probability end with one of these (bert, llama, gpt2, t5, bloom, ...).
_DROPOUT_SUFFIXES = ("dropout", "dropout_prob", "dropout_rate", "pdrop")


class MethodUnavailable(ValueError):
    """The recipe's method (or precision) cannot run here; the message is meant for the user, as is."""


# --------------------------------------------------------------------------------------------- preflight


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _bitsandbytes_available() -> bool:
    # find_spec, not import: importing bitsandbytes initialises CUDA and is slow
    return importlib.util.find_spec("bitsandbytes") is not None


def _bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_bf16_supported())


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """The CPU computes bfloat16 itself (AVX512-BF16 or AMX; Zen 4, Sapphire Rapids and later): bf16
    autocast then speeds matrix products up instead of emulating them (Linux ``/proc/cpuinfo`` flags)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def check_supported(recipe: Recipe, cuda_available: bool | None = None) -> None:
    """Reject a method, precision or architecture that cannot run here, before anything is launched.

    Reading the model's ``config.json`` is the only I/O: architecture checks are skipped when the base is
    not a local folder (a hub id), as loading it later reports its own errors.

    Args:
        recipe: the validated recipe.
        cuda_available: whether a CUDA GPU is usable; default ``torch.cuda.is_available()``.

    Raises:
        MethodUnavailable: with a message that says what to change in the recipe.
    """
    cuda = _cuda_available() if cuda_available is None else cuda_available
    if recipe.method.name == "qlora":
        _check_qlora(cuda)
    _check_precision(recipe.training.precision, cuda, recipe.distributed.deepspeed)
    if recipe.method.name == "prefix_tuning" and recipe.training.gradient_checkpointing:
        # peft's prefixes are a KV cache, which activation checkpointing cannot recompute (peft refuses)
        raise MethodUnavailable(
            "method.name=prefix_tuning does not work with training.gradient_checkpointing=true: "
            "turn checkpointing off or use method.name=prompt_tuning, p_tuning or lora"
        )
    problem = _architecture_problem(recipe)
    if problem:
        raise MethodUnavailable(problem)


def _check_qlora(cuda: bool) -> None:
    if not cuda:
        raise MethodUnavailable(
            "qlora needs a CUDA GPU with bitsandbytes; this machine has none: use method.name=lora"
        )
    if not _bitsandbytes_available():
        raise MethodUnavailable(
            "qlora needs the bitsandbytes package (pip install bitsandbytes), which is not importable here: "
            "install it or use method.name=lora"
        )


def _check_precision(precision: str, cuda: bool, deepspeed: str = "none") -> None:
    if precision == "fp32":
        return
    if not cuda:
        if precision == "bf16" and cpu_has_native_bf16():
            if deepspeed != "none":
                raise MethodUnavailable(
                    "training.precision=bf16 on a CPU runs as the Trainer's autocast (fp32 weights, bf16 "
                    f"products), not under DeepSpeed (distributed.deepspeed={deepspeed}): use "
                    "distributed.deepspeed=none (several processes still train over gloo) or precision=fp32"
                )
            return
        raise MethodUnavailable(
            f"training.precision={precision} needs a CUDA GPU"
            + (" or a CPU with native bfloat16 (AVX512-BF16 or AMX)" if precision == "bf16" else "")
            + "; this machine has neither: use training.precision=fp32"
        )
    if precision == "bf16" and not _bf16_supported():
        raise MethodUnavailable(
            "training.precision=bf16 needs a GPU with bfloat16 support (Ampere or newer); this GPU has none: "
            "use training.precision=fp16 or fp32"
        )


def _local_config(base: str) -> PreTrainedConfig | None:
    """The base model's config when it is a local folder, else None (no hub access in a preflight)."""
    try:
        path = Path(resolve_model(base))
    except FileNotFoundError:
        return None  # a missing packaged model: loading reports it with the install hint
    if not (path / "config.json").is_file():
        return None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


def _model_class(config: PreTrainedConfig, task: str) -> type | None:
    """The transformers class ``load_base_model`` would instantiate, without instantiating it."""
    from transformers.models.auto import modeling_auto

    mapping = (
        modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
        if task == "classification"
        else modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING
    )
    return mapping.get(type(config), None)


def _forward_accepts(cls: type, argument: str) -> bool:
    return argument in inspect.signature(cls.forward).parameters


def _architecture_problem(recipe: Recipe) -> str | None:
    """Why the recipe's method cannot work on its base model's architecture, or None."""
    config = _local_config(recipe.model.base)
    if config is None:
        return None
    arch, name = config.model_type, recipe.method.name
    if getattr(config, compact.QUANTIZATION, None):  # written by compact.save_quantized, for serving only
        return f"{recipe.model.base} is an int8-quantised model: it cannot be trained further"
    model_cls = _model_class(config, recipe.task)
    if model_cls is None:
        head = "sequence-classification" if recipe.task == "classification" else "causal-LM"
        return f"architecture {arch!r} has no {head} model in transformers: task {recipe.task} cannot use it"
    if name == "prefix_tuning" and not _accepts_prefix(model_cls, config):
        return (
            f"method.name=prefix_tuning needs a model that accepts past_key_values; "
            f"{model_cls.__name__} does not: use method.name=prompt_tuning or lora"
        )
    if name in ("prompt_tuning", "p_tuning") and not _forward_accepts(model_cls, "inputs_embeds"):
        return f"method.name={name} needs a model that accepts inputs_embeds; {model_cls.__name__} does not"
    try:
        if name in ("lora", "qlora") and not recipe.method.lora.target_modules:
            default_lora_targets(arch)
        if name == "ia3":
            ia3_modules(recipe, arch)
    except ValueError as err:
        return str(err)
    return None


def _accepts_prefix(model_cls: type, config: PreTrainedConfig) -> bool:
    """peft's prefix tuning passes past_key_values to the model, or else to its backbone (classification)."""
    if _forward_accepts(model_cls, "past_key_values"):
        return True
    from transformers.models.auto import modeling_auto

    backbone = modeling_auto.MODEL_MAPPING.get(type(config), None)
    return backbone is not None and _forward_accepts(backbone, "past_key_values")


# ----------------------------------------------------------------------------------------- target modules


def default_ia3_modules(model_type: str) -> tuple[list[str], list[str]]:
    """IA3 (target, feedforward) modules for an architecture: peft's own default, else tunery's table.

    Args:
        model_type: ``config.model_type`` of the base model.

    Returns:
        The target modules and the feedforward modules (a subset of the targets).

    Raises:
        ValueError: neither peft nor tunery has a default; the message names the recipe fields to set.
    """
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as PEFT_FF,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as PEFT_TARGETS,
    )

    if model_type in PEFT_TARGETS and model_type in PEFT_FF:
        return list(PEFT_TARGETS[model_type]), list(PEFT_FF[model_type])
    if model_type in IA3_MODULES_BY_ARCH:
        targets, feedforward = IA3_MODULES_BY_ARCH[model_type]
        return list(targets), list(feedforward)
    known = sorted(set(PEFT_TARGETS) | set(IA3_MODULES_BY_ARCH))
    raise ValueError(
        f"no default IA3 modules for architecture {model_type!r}; set `method.ia3.target_modules` "
        f"(and `method.ia3.feedforward_modules`) (known: {', '.join(known)})"
    )


def ia3_modules(recipe: Recipe, model_type: str) -> tuple[list[str], list[str]]:
    """The IA3 (target, feedforward) modules of a recipe: its own lists, completed from the defaults.

    Args:
        recipe: the validated recipe (``method.ia3``).
        model_type: ``config.model_type`` of the base model.

    Returns:
        The target modules and the feedforward modules.

    Raises:
        ValueError: no default for the architecture, or feedforward modules that are not targets.
    """
    cfg = recipe.method.ia3
    if cfg.target_modules is None:
        targets, default_ff = default_ia3_modules(model_type)
    else:
        targets = list(cfg.target_modules)
        try:
            default_ff = [m for m in default_ia3_modules(model_type)[1] if m in targets]
        except ValueError:
            default_ff = []  # own targets on an unknown architecture: no module is feedforward unless named
    feedforward = list(cfg.feedforward_modules) if cfg.feedforward_modules is not None else default_ff
    stray = [m for m in feedforward if m not in targets]
    if stray:
        raise ValueError(
            f"`method.ia3.feedforward_modules` must be a subset of the target modules {targets}; "
            f"not targets: {stray}"
        )
    return targets, feedforward


# ------------------------------------------------------------------------------------------------ loading


def auto_model_class(task: str) -> type:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task == "classification":
        return AutoModelForSequenceClassification
    if task in ("sft", "preference"):
        return AutoModelForCausalLM
    raise ValueError(f"unknown task {task!r}; expected 'classification', 'sft' or 'preference'")


def dropout_fields(config: PreTrainedConfig) -> list[str]:
    """Names of the config fields that hold a dropout probability (None counts: e.g. classifier_dropout).

    Args:
        config: a transformers model config.

    Returns:
        The field names, sorted.
    """
    fields = []
    for key, value in config.to_dict().items():
        is_probability = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
        if key.endswith(_DROPOUT_SUFFIXES) and is_probability:
            fields.append(key)
    return sorted(fields)


def _load_config(model_path: str, task: str, labels: list[str] | None, dropout: float | None):
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {}
    if task == "classification":
        if not labels:
            raise ValueError("task classification needs the list of labels to size the classification head")
        kwargs = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    config = AutoConfig.from_pretrained(model_path, **kwargs)
    if dropout is not None:
        # on the config, before the model is built: nn.Dropout modules read their p at construction
        for field in dropout_fields(config):
            setattr(config, field, dropout)
    return config


def load_base_model(model_path: str, task: str, labels: list[str] | None, recipe: Recipe) -> PreTrainedModel:
    """Load the pretrained model for a task, ready for :func:`apply_method`.

    ``training.dropout`` replaces every dropout probability of the config; ``training.gradient_checkpointing``
    turns on (non-reentrant) activation checkpointing. For qlora the weights are loaded in 4 bits
    (bitsandbytes NF4/FP4, bfloat16 compute) on this process's GPU and prepared for k-bit training.

    Args:
        model_path: a local folder or hub id (see :func:`tunery.models.resolve_model`).
        task: ``classification`` (sequence classifier with a fresh head) or ``sft`` (causal LM).
        labels: the class labels in head order (classification only).
        recipe: the validated recipe.

    Returns:
        The transformers model (not yet wrapped for a PEFT method).

    Raises:
        MethodUnavailable: qlora without a CUDA GPU and bitsandbytes.
        CompactError: an int8-quantised base (it serves; it does not train).
    """
    import torch

    config = _load_config(model_path, task, labels, recipe.training.dropout)
    auto_cls = auto_model_class(task)
    if compact.is_compact(Path(model_path)):  # fewer heads in some layers (compact.prune_heads); not int8
        model = compact.load_compact(Path(model_path), auto_cls, config, trainable=True).train()
    elif recipe.method.name == "qlora":
        model = _load_quantized(auto_cls, model_path, config, recipe)
    else:
        # transformers 5 loads in the checkpoint's dtype by default (bf16 for most LLMs); optimiser states
        # and mixed precision expect float32 master weights
        model = from_pretrained_reported(auto_cls, model_path, config=config, dtype=torch.float32)
    if recipe.training.gradient_checkpointing:
        _enable_checkpointing(model, peft=recipe.method.name != "full")
    return model


class _HeldLoadReports(logging.Filter):
    """Holds back the LOAD REPORT records transformers logs while a model loads."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.records.append(record)
            return False
        return True


def from_pretrained_reported(auto_cls: type, model_path: str, **kwargs):
    """``auto_cls.from_pretrained`` with transformers' load report replaced by one line where it says only
    what is expected: the new task head (a classifier on a pretrained encoder) has no pretrained weights.

    Any other finding (missing weights inside the pretrained body, unexpected or mismatched keys) is logged
    as transformers reports it.
    """
    source = logging.getLogger("transformers.modeling_utils")
    held = _HeldLoadReports()
    source.addFilter(held)
    try:
        model, info = auto_cls.from_pretrained(model_path, output_loading_info=True, **kwargs)
    finally:
        source.removeFilter(held)
    body = f"{model.base_model_prefix}."
    missing = list(info.get("missing_keys") or [])
    clean = not info.get("unexpected_keys") and not info.get("mismatched_keys")
    expected = clean and all(not key.startswith(body) for key in missing)
    if expected and held.records:
        head = ", ".join(sorted(missing))
        logging.getLogger(__name__).info("new task head, initialised at random: %s", head)
    else:
        for record in held.records:
            source.handle(record)
    return model


def _load_quantized(auto_cls: type, model_path: str, config: PreTrainedConfig, recipe: Recipe):
    """Load the base in 4 bits and freeze it for LoRA on top (qlora)."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    _check_qlora(_cuda_available())
    quant = recipe.method.quantization
    bnb_config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    # 4-bit weights cannot move between devices after loading: place the whole model on this process's GPU
    # (LOCAL_RANK under torchrun/accelerate); device_map="auto" would shard it across GPUs and break DDP.
    device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model = auto_cls.from_pretrained(
        model_path, config=config, quantization_config=bnb_config, device_map=device_map
    )
    # freezes the base and upcasts fp16/bf16 leftovers (norms, head) to fp32 for stable training;
    # checkpointing is left to _enable_checkpointing so that every method takes the same path
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _enable_checkpointing(model: PreTrainedModel, peft: bool) -> None:
    # non-reentrant checkpointing works with a frozen base; the reentrant kind loses the gradient
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if peft:
        # frozen embeddings produce outputs without grad; this keeps the graph alive should a caller
        # (e.g. the HF Trainer with its own settings) switch to reentrant checkpointing
        model.enable_input_require_grads()


# ------------------------------------------------------------------------------------------ applying a method


def _task_type(task: str):
    from peft import TaskType

    return TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM


def _lora_config(recipe: Recipe, model: PreTrainedModel, task_type):
    from peft import LoraConfig

    lora = recipe.method.lora
    return LoraConfig(
        task_type=task_type,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules or default_lora_targets(model.config.model_type),
    )


def _prompt_tuning_config(recipe: Recipe, model: PreTrainedModel, task_type):
    from peft import PromptTuningConfig, PromptTuningInit

    prompt = recipe.method.prompt
    common = {"task_type": task_type, "num_virtual_tokens": prompt.num_virtual_tokens}
    if not prompt.init_text:
        return PromptTuningConfig(**common, prompt_tuning_init=PromptTuningInit.RANDOM)
    # text init reads the tokenizer saved with the base model and copies those tokens' embeddings
    return PromptTuningConfig(
        **common,
        prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text=prompt.init_text,
        tokenizer_name_or_path=model.name_or_path,
    )


def _p_tuning_config(recipe: Recipe, model: PreTrainedModel, task_type):
    from peft import PromptEncoderConfig

    prompt = recipe.method.prompt
    return PromptEncoderConfig(
        task_type=task_type,
        num_virtual_tokens=prompt.num_virtual_tokens,
        encoder_hidden_size=prompt.encoder_hidden_size,
    )


def _prefix_tuning_config(recipe: Recipe, model: PreTrainedModel, task_type):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=recipe.method.prompt.num_virtual_tokens)


def _ia3_config(recipe: Recipe, model: PreTrainedModel, task_type):
    from peft import IA3Config

    targets, feedforward = ia3_modules(recipe, model.config.model_type)
    return IA3Config(task_type=task_type, target_modules=targets, feedforward_modules=feedforward)


_PEFT_CONFIG_BUILDERS = {
    "lora": _lora_config,
    "qlora": _lora_config,
    "prompt_tuning": _prompt_tuning_config,
    "p_tuning": _p_tuning_config,
    "prefix_tuning": _prefix_tuning_config,
    "ia3": _ia3_config,
}


def apply_method(model: PreTrainedModel, recipe: Recipe):
    """Wrap a loaded base model for the recipe's fine-tuning method.

    For classification, peft puts the head (``classifier`` / ``score``) in ``modules_to_save``: a trainable
    copy next to the frozen original. This is checked, since a frozen fresh head would train nothing useful.

    Args:
        model: the model from :func:`load_base_model`.
        recipe: the validated recipe (``method``, ``task``).

    Returns:
        ``model`` itself for ``full``, else a ``peft.PeftModel`` whose base weights are frozen.

    Raises:
        RuntimeError: a classification model whose head peft did not make trainable.
    """
    name = recipe.method.name
    if name == "full":
        return model
    from peft import TaskType, get_peft_model

    task_type = _task_type(recipe.task)
    peft_model = get_peft_model(model, _PEFT_CONFIG_BUILDERS[name](recipe, model, task_type))
    if task_type == TaskType.SEQ_CLS:
        _check_head_trainable(peft_model)
    return peft_model


def head_wrappers(base: PreTrainedModel) -> dict[str, Any]:
    """The modules peft copied to train and save alongside the adapter (``ModulesToSaveWrapper``), by name."""
    from peft.utils import ModulesToSaveWrapper

    return {name: m for name, m in base.named_modules() if isinstance(m, ModulesToSaveWrapper)}


def _check_head_trainable(peft_model) -> None:
    wrappers = head_wrappers(peft_model.get_base_model())
    if not wrappers:
        raise RuntimeError(
            f"peft found no classification head ('classifier' or 'score') in "
            f"{type(peft_model.get_base_model()).__name__}: the fresh head would stay untrained"
        )
    adapter = peft_model.active_adapter
    frozen = [
        name
        for name, wrapper in wrappers.items()
        if not all(p.requires_grad for p in wrapper.modules_to_save[adapter].parameters())
    ]
    if frozen:
        raise RuntimeError(f"the classification head is not trainable: {frozen}")


def trainable_summary(model) -> dict[str, float | int]:
    """How much of the model trains.

    Args:
        model: a transformers model or a ``PeftModel``.

    Returns:
        ``{"trainable_params", "total_params", "trainable_share"}``; the share is in [0, 1].
    """
    if hasattr(model, "get_nb_trainable_parameters"):
        # peft's count knows 4-bit packed weights and DeepSpeed ZeRO-3 partitions
        trainable, total = model.get_nb_trainable_parameters()
    else:
        sizes = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in model.parameters()]
        trainable = sum(n for n, grad in sizes if grad)
        total = sum(n for n, _ in sizes)
    return {
        "trainable_params": int(trainable),
        "total_params": int(total),
        "trainable_share": float(trainable / total) if total else 0.0,
    }
