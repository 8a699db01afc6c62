"""Smaller forms of a trained encoder, and loading them back: fewer layers, fewer attention heads, int8.

transformers 5 has no head pruning of its own and cannot express a model whose layers keep different numbers
of heads in its config. Such a model is saved as a normal folder whose ``config.json`` also carries
``tunery_pruned_heads`` (layer -> removed head indices, of the unpruned layout) and, for a dynamically
quantised one, ``tunery_quantization``; :func:`load_compact` rebuilds the shapes from them before the
weights are read. Fewer layers need nothing special: the config says how many.

Head pruning and layer selection work on BERT-style encoders (an ``encoder.layer`` list whose attention has
``query``/``key``/``value`` projections and an output ``dense``: BERT, MiniLM, RoBERTa, ELECTRA...).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

PRUNED_HEADS = "tunery_pruned_heads"  # config attribute: {"layer": [removed head, ...]}
QUANTIZATION = "tunery_quantization"  # config attribute: "dynamic-int8"
DYNAMIC_INT8 = "dynamic-int8"
QUANTIZED_WEIGHTS = "quantized_int8.pt"  # the state dict of a dynamically quantised model


class CompactError(ValueError):
    """The model cannot be made smaller this way (an architecture without the parts it changes)."""


def encoder_layers(model):
    """The ``nn.ModuleList`` of transformer layers of a BERT-style encoder (with or without a task head)."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None:
        raise CompactError(
            f"{type(model).__name__} has no `encoder.layer` list: layer selection and head pruning support "
            "BERT-style encoders (BERT, MiniLM, RoBERTa, ELECTRA)"
        )
    return layers


def attention_parts(layer):
    """A layer's self-attention (query/key/value) and its output projection module (``dense``)."""
    attention = getattr(layer, "attention", None)
    inner, output = getattr(attention, "self", None), getattr(attention, "output", None)
    if inner is None or output is None or not all(hasattr(inner, n) for n in ("query", "key", "value")):
        raise CompactError(f"{type(layer).__name__} has no query/key/value attention: heads cannot be pruned")
    return inner, output


def heads_of(model) -> list[int]:
    """The number of attention heads each layer has now."""
    counts = []
    for layer in encoder_layers(model):
        inner, _ = attention_parts(layer)
        counts.append(inner.query.out_features // inner.attention_head_size)
    return counts


def evenly_spaced(total: int, keep: int) -> list[int]:
    """``keep`` of ``total`` layer indices, evenly spaced and ending with the last one (6 -> 3: 1, 3, 5)."""
    if not 1 <= keep <= total:
        raise CompactError(f"cannot keep {keep} of {total} layers")
    return [round((i + 1) * total / keep) - 1 for i in range(keep)]


def keep_layers(model, keep: Sequence[int]):
    """A copy of ``model`` with only the layers ``keep`` (in that order), initialised from them."""
    import torch

    layers = encoder_layers(model)
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < len(layers) for i in keep):
        raise CompactError(f"layers to keep {list(keep)} are not distinct indices of 0..{len(layers) - 1}")
    smaller = copy.deepcopy(model)
    target = encoder_layers(smaller)
    kept = [target[i] for i in keep]
    for index, layer in enumerate(kept):  # attention modules know their own index (caches, layer types)
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    target_parent = getattr(smaller, "base_model", smaller).encoder
    target_parent.layer = torch.nn.ModuleList(kept)
    smaller.config.num_hidden_layers = len(kept)
    heads = getattr(smaller.config, PRUNED_HEADS, None)
    if heads:
        moved = {str(new): heads[str(old)] for new, old in enumerate(keep) if str(old) in heads}
        setattr(smaller.config, PRUNED_HEADS, moved or None)
    return smaller


def _shrink(linear, keep_index, dim: int):
    import torch

    weight = linear.weight.index_select(dim, keep_index).detach().clone()
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.index_select(0, keep_index).detach().clone()
    out_features, in_features = weight.shape
    new = torch.nn.Linear(in_features, out_features, bias=bias is not None)
    new = new.to(dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias if dim == 0 else linear.bias)
    return new


def prune_heads(model, remove: dict[int, Sequence[int]]) -> None:
    """Remove attention heads in place: ``remove`` maps a layer index to head indices of that layer's
    *current* heads. Records the removal in ``config.tunery_pruned_heads`` (as indices of the layer's
    original heads) so that :func:`load_compact` can rebuild the shapes. Every layer keeps one head."""
    import torch

    layers = encoder_layers(model)
    recorded = {k: list(v) for k, v in (getattr(model.config, PRUNED_HEADS, None) or {}).items()}
    for index, heads in remove.items():
        heads = sorted(set(int(h) for h in heads))
        if not heads:
            continue
        inner, output = attention_parts(layers[int(index)])
        size = inner.attention_head_size
        count = inner.query.out_features // size
        if any(not 0 <= h < count for h in heads) or len(heads) >= count:
            raise CompactError(f"layer {index} has {count} heads: cannot remove {heads} (one must stay)")
        kept_heads = [h for h in range(count) if h not in heads]
        keep_index = torch.tensor([h * size + j for h in kept_heads for j in range(size)], dtype=torch.long)
        inner.query = _shrink(inner.query, keep_index, 0)
        inner.key = _shrink(inner.key, keep_index, 0)
        inner.value = _shrink(inner.value, keep_index, 0)
        output.dense = _shrink(output.dense, keep_index, 1)
        inner.num_attention_heads = len(kept_heads)
        inner.all_head_size = len(kept_heads) * size
        # the original indices of the heads removed now (earlier removals shifted the current ones)
        before = recorded.get(str(index), [])
        original = [h for h in range(count + len(before)) if h not in before]
        recorded[str(index)] = sorted(before + [original[h] for h in heads])
    model.config.__dict__[PRUNED_HEADS] = recorded or None


def apply_recorded_heads(model) -> None:
    """Give a model built from a pruned config (full-size layers) the shapes its saved weights have."""
    recorded = getattr(model.config, PRUNED_HEADS, None) or {}
    model.config.__dict__[PRUNED_HEADS] = None
    prune_heads(model, {int(k): v for k, v in recorded.items()})


def magnitude_prune(model, sparsity: float) -> dict:
    """Set the ``sparsity`` share of the smallest-magnitude weights of the encoder's linear layers to zero
    (one global threshold, torch.nn.utils.prune's L1 criterion), permanently. Embeddings, norms, biases and
    the classification head keep every weight. Returns the counts."""
    import torch
    from torch.nn.utils import prune

    if not 0.0 < sparsity < 1.0:
        raise CompactError(f"sparsity must be in (0, 1), got {sparsity}")
    targets = [(m, "weight") for m in encoder_layers(model).modules() if isinstance(m, torch.nn.Linear)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    for module, name in targets:
        prune.remove(module, name)
    total = sum(m.weight.numel() for m, _ in targets)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
    return {"weights": total, "zeros": zeros, "sparsity": zeros / total if total else 0.0}


def quantize_int8(model):
    """Dynamic int8 quantisation of every ``nn.Linear`` (weights int8, activations quantised per batch at
    run time): CPU inference through fbgemm/onednn kernels. Returns a new model in eval mode."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    quantized = quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8)
    quantized.config.__dict__[QUANTIZATION] = DYNAMIC_INT8
    return quantized


def save_quantized(model, out_dir: Path) -> None:
    """Write a :func:`quantize_int8` model: its config (with ``tunery_quantization``) and its state dict."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out_dir)
    torch.save(model.state_dict(), out_dir / QUANTIZED_WEIGHTS)


def is_compact(model_dir: Path) -> bool:
    """Whether the folder holds a head-pruned or quantised model (one ``from_pretrained`` cannot read)."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return False
    values = json.loads(config.read_text(encoding="utf-8"))
    return bool(values.get(PRUNED_HEADS) or values.get(QUANTIZATION))


def load_compact(model_dir: Path, auto_cls, config=None, *, trainable: bool = False):
    """Load a folder written from a head-pruned and/or quantised model, in eval mode.

    ``trainable=True`` refuses an int8 model: its weights are packed for inference kernels only.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    config = config or AutoConfig.from_pretrained(model_dir)
    quantization = getattr(config, QUANTIZATION, None)
    if quantization not in (None, DYNAMIC_INT8):
        raise CompactError(f"{model_dir}: unknown quantisation {quantization!r}")
    if trainable and quantization:
        raise CompactError(f"{model_dir} is an int8-quantised model: it cannot be trained further")
    model = auto_cls.from_config(config)
    apply_recorded_heads(model)
    if quantization == DYNAMIC_INT8:
        model = quantize_int8(model)
        state = torch.load(model_dir / QUANTIZED_WEIGHTS, map_location="cpu", weights_only=False)
    else:
        state = {}
        for path in sorted(model_dir.glob("*.safetensors")):
            state.update(load_file(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # tied or buffer-only keys may be absent from a saved state (position_ids): real weights may not
    real_missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if real_missing or unexpected:
        raise CompactError(
            f"{model_dir}: weights do not fit the model: missing {real_missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.eval()


def parameter_count(model) -> int:
    """Parameters of the model, counting an int8 linear layer's packed weights and biases too."""
    import torch

    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(module, "weight") and callable(module.weight):
            weight = module.weight()
            total += weight.numel()
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            total += bias.numel() if isinstance(bias, torch.Tensor) else 0
    return total


def folder_bytes(model_dir: Path) -> int:
    """Bytes of the model's weight files (the tokenizer and metadata excluded)."""
    patterns = ("*.safetensors", "*.bin", QUANTIZED_WEIGHTS)
    return sum(p.stat().st_size for pattern in patterns for p in Path(model_dir).rglob(pattern))
