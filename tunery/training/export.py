"""Exporting a trained model so that it serves without peft's training-time wrappers, checked
numerically before anything is written.

Prompt-learning methods add virtual tokens to every input, which no weight matrix can express, so they cannot
be merged. Their export folder is self-contained (the base may have been a temporary path)::

    <out_dir>/tunery_export.json   {"format": "adapter", "peft_type": ..., "task_type": ...}
    <out_dir>/base/                the frozen base model: config.json + model.safetensors
    <out_dir>/adapter/             the peft adapter (adapter_config.json + adapter_model.safetensors),
                                   including the trained classification head (modules_to_save)

``base/`` and ``adapter/`` are sub-folders on purpose: ``AutoModel.from_pretrained(out_dir)`` then fails
loudly instead of silently loading the base without its prompt. Use :func:`load_exported` for every format.
Every weight file is safetensors.

This module never imports torch, transformers or peft at import time, so importing it stays cheap.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel

from tunery.layout import ADAPTER_DIR, BASE_DIR, EXPORT_META
from tunery.training import compact
from tunery.training.methods import auto_model_class, head_wrappers

DEFAULT_TOLERANCE = 1e-4
# The allowed difference also scales with the logits: fp32 rounding of a merge (W + BA computed once
# instead of Wx + B(Ax) at every call) grows with the magnitude of the outputs. On the packaged SmolLM2
# (49k vocabulary, max |logit| ~39) a correct LoRA merge differs by 6.9e-5 (random adapter) to 1.3e-4
# (trained): ~2-4e-6 of the largest logit. A wrong merge (a dropped or doubled adapter, a corrupted base)
# moves logits by whole units.
RELATIVE_TOLERANCE = 1e-5
# The checks hold two or three copies of the sample's logits at once: rows x tokens x output width floats.
# For a causal LM the width is the vocabulary (49k for SmolLM2), so 16 rows of 512 tokens are 1.6 GB a copy.
# The sample is cut to this many logits (2 rows of 512 tokens there); a wrong merge moves every position's
# logits, so a few full rows find it as surely as sixteen.
CHECK_LOGITS_BUDGET = 2**26


class ExportMismatchError(RuntimeError):
    """The exported model does not reproduce the trained model's outputs."""


def _is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _is_quantized(model) -> bool:
    """Whether the (base) model holds k-bit weights (bitsandbytes sets these flags when loading)."""
    return bool(
        getattr(model, "is_loaded_in_4bit", False)
        or getattr(model, "is_loaded_in_8bit", False)
        or getattr(model, "is_quantized", False)
    )


def _device(model) -> Any:
    return next(model.parameters()).device


def _logits(model, inputs: dict) -> Any:
    import torch

    model.eval()
    with torch.no_grad():
        return model(**inputs).logits.float()


def _max_abs_diff(a, b) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def _logits_per_row(model, tokens: int) -> int | None:
    """How many logits one input row gives: tokens x vocabulary for a LM head, the labels for a
    classification head, None when the model shows neither."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return tokens * int(head.weight.shape[0])
    labels = getattr(getattr(model, "config", None), "num_labels", None)
    return int(labels) if labels else None


def _bounded(model, sample_inputs: dict) -> dict:
    """The first rows of ``sample_inputs`` whose logits fit CHECK_LOGITS_BUDGET (at least one row)."""
    ids = sample_inputs.get("input_ids")
    if ids is None or getattr(ids, "dim", lambda: 0)() < 2:
        return dict(sample_inputs)
    rows = int(ids.shape[0])
    per_row = _logits_per_row(model, int(ids.shape[1]))
    keep = rows if not per_row else max(1, CHECK_LOGITS_BUDGET // per_row)
    if keep >= rows:
        return dict(sample_inputs)
    return {
        k: v[:keep] if getattr(v, "dim", lambda: 0)() and v.shape[0] == rows else v
        for k, v in sample_inputs.items()
    }


def allowed_difference(reference, tolerance: float) -> float:
    """The largest max-abs logit difference an export may show: ``tolerance`` or RELATIVE_TOLERANCE of
    the largest reference logit, whichever is larger (NaN or infinite logits allow nothing)."""
    scale = float(reference.float().abs().max()) if reference.numel() else 0.0
    if scale != scale or scale == float("inf"):
        return -1.0
    return max(tolerance, RELATIVE_TOLERANCE * scale)


def _check(diff: float, reference, tolerance: float, what: str) -> float:
    """Raise unless ``diff`` is within :func:`allowed_difference`; return the bound that was applied."""
    allowed = allowed_difference(reference, tolerance)
    if not diff <= allowed:  # written so that NaN logits fail too
        raise ExportMismatchError(
            f"{what} does not reproduce the trained model: max abs diff of the logits {diff:.3e} "
            f"> allowed {allowed:.1e} (the larger of {tolerance:.1e} and {RELATIVE_TOLERANCE:.0e} x the "
            "largest logit)"
        )
    return allowed


def _write_meta(out_dir: Path, meta: dict) -> None:
    (out_dir / EXPORT_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def export_model(model, out_dir: Path, sample_inputs: dict, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Save a trained model so that it can be served without peft's training-time wrappers.

    * ``full``: saved as is.
    * lora / ia3: adapters merged into the weights (``merge_and_unload``); the merged model's logits are
      compared with the adapter model's on ``sample_inputs`` before anything is written.
    * qlora: 4-bit weights cannot absorb the LoRA delta exactly, so the base is re-loaded in float32 from
      ``base_model_name_or_path``, the trained adapter is attached and merged there. The merge is checked
      against that de-quantised adapter model; the (unavoidable) distance to the 4-bit model is reported as
      ``quantization_gap`` and not enforced. Needs the float32 base to fit on the model's device.
    * prompt-learning methods: base + adapter in the layout of the module docstring; the folder is reloaded
      with :func:`load_exported` and checked against the trained model.

    The model is put in eval mode, and a merged model is merged in place: do not train it further.

    Args:
        model: the trained model (``PeftModel`` or transformers model).
        out_dir: the folder to write (created; existing files of the same name are replaced).
        sample_inputs: a tokenized batch (``input_ids``, ``attention_mask``, ...) for the checks.
        tolerance: the smallest bound on the largest absolute logit difference; the bound grows with the
            logits' scale (see :func:`allowed_difference`).

    Returns:
        ``{"format": "merged"|"adapter"|"full", "max_abs_diff": float|None, "quantization_gap": float|None}``.

    Raises:
        ExportMismatchError: the exported model's logits differ beyond the bound (nothing is left behind).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not _is_peft(model):
        model.save_pretrained(out_dir)
        _write_meta(out_dir, {"format": "full"})
        return {"format": "full", "max_abs_diff": None, "quantization_gap": None}
    inputs = _bounded(model, sample_inputs)
    inputs = {k: v.to(_device(model)) if hasattr(v, "to") else v for k, v in inputs.items()}
    if model.active_peft_config.is_prompt_learning:
        return _export_adapter(model, out_dir, inputs, tolerance)
    return _export_merged(model, out_dir, inputs, tolerance)


def _export_merged(model, out_dir: Path, inputs: dict, tolerance: float) -> dict:
    peft_type = str(model.active_peft_config.peft_type.value)
    trained = _logits(model, inputs)
    gap = None
    if _is_quantized(model.get_base_model()):
        model = _dequantized_adapter_model(model)
        reference = _logits(model, inputs)
        gap = _max_abs_diff(trained, reference)
    else:
        reference = trained
    merged = model.merge_and_unload()
    diff = _max_abs_diff(reference, _logits(merged, inputs))
    allowed = _check(diff, reference, tolerance, f"the merged {peft_type} model")
    merged.save_pretrained(out_dir)
    _write_meta(
        out_dir, {"format": "merged", "peft_type": peft_type, "max_abs_diff": diff, "allowed_diff": allowed}
    )
    return {"format": "merged", "max_abs_diff": diff, "quantization_gap": gap}


def _dequantized_adapter_model(model):
    """The trained adapter on a float32 copy of the base (qlora): merging into 4-bit weights would round."""
    import torch
    from peft import PeftModel

    base = model.get_base_model()
    config = copy.deepcopy(base.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # else from_pretrained would quantise again
    source = model.active_peft_config.base_model_name_or_path
    with tempfile.TemporaryDirectory(prefix="tunery-qlora-") as tmp:
        model.save_pretrained(tmp)
        full_base = type(base).from_pretrained(source, config=config, dtype=torch.float32)
        full = PeftModel.from_pretrained(full_base, tmp)
    return full.to(_device(model))


def _export_adapter(model, out_dir: Path, inputs: dict, tolerance: float) -> dict:
    peft_config = model.active_peft_config
    task_type = str(getattr(peft_config.task_type, "value", peft_config.task_type))  # enum or plain str
    meta = {
        "format": "adapter",
        "peft_type": str(peft_config.peft_type.value),
        "task_type": task_type,
        "base_model_source": peft_config.base_model_name_or_path,
    }
    trained = _logits(model, inputs)
    _save_base_model(model.get_base_model(), out_dir / BASE_DIR)
    model.save_pretrained(out_dir / ADAPTER_DIR)
    _point_adapter_at_base(out_dir)
    _write_meta(out_dir, meta)
    task = "classification" if task_type == "SEQ_CLS" else "sft"
    reloaded = load_exported(out_dir, task).to(_device(model))
    diff = _max_abs_diff(trained, _logits(reloaded, inputs))
    try:
        allowed = _check(diff, trained, tolerance, "the exported base + adapter folder")
    except ExportMismatchError:
        for name in (BASE_DIR, ADAPTER_DIR, EXPORT_META):  # never leave a folder that looks usable
            path = out_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        raise
    _write_meta(out_dir, {**meta, "max_abs_diff": diff, "allowed_diff": allowed})
    return {"format": "adapter", "max_abs_diff": diff, "quantization_gap": None}


def _save_base_model(base: PreTrainedModel, path: Path) -> None:
    """Save the frozen base weights under their plain names (the trained head travels in the adapter)."""
    with _original_heads(base):
        base.save_pretrained(path)


@contextlib.contextmanager
def _original_heads(base: PreTrainedModel) -> Iterator[None]:
    """Temporarily put the original modules back in place of peft's ``ModulesToSaveWrapper``s.

    Saved with the wrappers, the head's keys would read ``classifier.original_module.weight`` and a plain
    ``from_pretrained`` would not find them.
    """
    wrappers = head_wrappers(base)
    swapped = []
    for name, wrapper in wrappers.items():
        parent_name, _, child = name.rpartition(".")
        parent = base.get_submodule(parent_name) if parent_name else base
        setattr(parent, child, wrapper.original_module)
        swapped.append((parent, child, wrapper))
    try:
        yield
    finally:
        for parent, child, wrapper in swapped:
            setattr(parent, child, wrapper)


def _point_adapter_at_base(out_dir: Path) -> None:
    # the training-time base may be a temporary folder: point peft's own loaders at the copy we saved
    config_path = out_dir / ADAPTER_DIR / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = str((out_dir / BASE_DIR).resolve())
    config_path.write_text(json.dumps(adapter_config, indent=2), encoding="utf-8")


def load_exported(model_dir: Path, task: str):
    """Load a folder written by :func:`export_model` (any format), in eval mode.

    Args:
        model_dir: the export folder.
        task: ``classification`` or ``sft``.

    Returns:
        A transformers model (``full``/``merged``) or a ``peft.PeftModel`` (``adapter``), in eval mode.
    """
    model_dir = Path(model_dir)
    auto_cls = auto_model_class(task)
    if (model_dir / ADAPTER_DIR / "adapter_config.json").is_file():
        from peft import PeftModel

        base = auto_cls.from_pretrained(model_dir / BASE_DIR)
        model = PeftModel.from_pretrained(base, model_dir / ADAPTER_DIR)
    elif compact.is_compact(model_dir):  # head-pruned or int8 (tunery.training.compact)
        model = compact.load_compact(model_dir, auto_cls)
    else:
        model = auto_cls.from_pretrained(model_dir)
    return model.eval()
