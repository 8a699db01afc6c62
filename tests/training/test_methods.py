"""Every fine-tuning method on every task, on tiny models: it trains, freezes what it should, exports exactly.

Models: the session's tiny BERT (conftest ``tiny_bert``, MiniLM tokenizer) for classification, and a tiny
Llama built here (fake token ids, no tokenizer) for causal LM and for decoder classification.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunery.config import Recipe
from tunery.layout import EXPORT_META
from tunery.training import export, methods
from tunery.training.export import ExportMismatchError, export_model, load_exported
from tunery.training.methods import (
    MethodUnavailable,
    apply_method,
    check_supported,
    load_base_model,
    trainable_summary,
)

METHODS = ("full", "lora", "prompt_tuning", "p_tuning", "prefix_tuning", "ia3")  # qlora: CUDA only
PEFT_METHODS = tuple(m for m in METHODS if m != "full")
# (task, architecture): the decoder classifier checks the `score` head and last-token pooling
TASKS = (("classification", "bert"), ("sft", "llama"), ("classification", "llama"))
LABELS = ["negative", "neutral", "positive"]
EXPORT_FORMAT = {
    "full": "full",
    "lora": "merged",
    "ia3": "merged",
    "prompt_tuning": "adapter",
    "p_tuning": "adapter",
    "prefix_tuning": "adapter",
}
STEPS = 4  # >= 3: lora_A gets no gradient on the first step, while lora_B is still zero


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models are tiny: one thread avoids thread-pool overhead (and contention on a busy CI box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny randomly initialised Llama (2 layers, hidden 32, 4 heads / 2 kv heads, vocab 1000)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tiny_bert: Path, tiny_llama: Path) -> dict[str, Path]:
    return {"bert": tiny_bert, "llama": tiny_llama}


def make_recipe(method: str, task: str, base: Path | str, **training) -> Recipe:
    """A recipe for the tiny models: small adapters, no dropout (deterministic losses)."""
    return Recipe.model_validate(
        {
            "name": "methods-test",
            "task": task,
            "data": {"source": "unused.csv"},
            "mlflow": {"registered_model": "methods-test"},
            "model": {"base": str(base)},
            "method": {
                "name": method,
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                "prompt": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
            },
            "training": {"dropout": 0.0, **training},
        }
    )


def make_batch(task: str, arch: str, model_path: Path) -> dict[str, torch.Tensor]:
    """A fixed batch of 4 rows with padding: real text for BERT, fake token ids for Llama."""
    if arch == "bert":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path)
        texts = ["a great movie", "terrible plot and bad acting", "fine", "not good at all, sadly"]
        batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    else:
        generator = torch.Generator().manual_seed(1)
        input_ids = torch.randint(3, 1000, (4, 12), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        input_ids[0, :3], attention_mask[0, :3] = 0, 0  # left padding: the last token is a real one
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if task == "classification":
        batch["labels"] = torch.tensor([2, 0, 1, 0])
    else:
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


def build(method: str, task: str, arch: str, models: dict[str, Path], **training):
    """Load the tiny base for (task, arch) and wrap it for the method; also return the recipe."""
    recipe = make_recipe(method, task, models[arch], **training)
    torch.manual_seed(0)  # the fresh head and the adapters start the same in every run
    base = load_base_model(str(models[arch]), task, LABELS if task == "classification" else None, recipe)
    return base, recipe


def train_steps(model, batch: dict, steps: int = STEPS) -> list[float]:
    """AdamW (lr 1e-2) on the fixed batch; returns the loss before each step and after the last."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(model(**batch).loss.item())
    return losses


def logits(model, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def inputs_of(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.mark.parametrize(("task", "arch"), TASKS, ids=[f"{t}-{a}" for t, a in TASKS])
@pytest.mark.parametrize("method", METHODS)
def test_method_trains_freezes_and_exports(method, task, arch, models, tmp_path):
    base, recipe = build(method, task, arch, models)
    batch = make_batch(task, arch, models[arch])
    base_params = dict(base.named_parameters())  # the same tensor objects stay inside the peft wrappers
    base_before = {name: p.detach().clone() for name, p in base_params.items()}

    model = apply_method(base, recipe)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    start = {name: p.detach().clone() for name, p in trainable.items()}
    losses = train_steps(model, batch)
    assert losses[-1] < losses[0], f"{method}/{task}-{arch}: loss did not go down: {losses}"

    summary = trainable_summary(model)
    if method == "full":
        assert summary["trainable_share"] == 1.0
    else:
        assert 0 < summary["trainable_params"] < summary["total_params"]
        for name, param in base_params.items():
            torch.testing.assert_close(
                param, base_before[name], rtol=0, atol=0, msg=f"base weight {name} moved"
            )
        unmoved = [name for name, p in trainable.items() if torch.equal(p, start[name])]
        assert not unmoved, f"trainable tensors that never moved: {unmoved}"
        if task == "classification":
            head = [n for n in trainable if ".modules_to_save." in n and ("classifier" in n or "score" in n)]
            assert head, f"the classification head is not trained: {sorted(trainable)}"

    expected = logits(model, batch)
    result = export_model(model, tmp_path / "export", inputs_of(batch))
    assert result["format"] == EXPORT_FORMAT[method]
    if method != "full":
        assert result["max_abs_diff"] < 1e-4
    files = [p.name for p in (tmp_path / "export").rglob("*") if p.is_file()]
    assert any(f.endswith(".safetensors") for f in files) and not any(f.endswith(".bin") for f in files)

    loaded = load_exported(tmp_path / "export", task)
    assert not loaded.training
    diff = (logits(loaded, batch) - expected).abs().max().item()
    assert diff < 1e-4, f"{method}/{task}-{arch}: exported model differs by {diff:.2e}"


def _plant_adapter_weights(model) -> None:
    """Give the adapters non-trivial values, so that dropping them changes the logits."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "ia3_l" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_corrupted_merge_is_caught(method, models, tmp_path, monkeypatch):
    base, recipe = build(method, "classification", "bert", models)
    model = apply_method(base, recipe)
    _plant_adapter_weights(model)
    batch = make_batch("classification", "bert", models["bert"])
    # planted bug: "merging" that throws the adapters away instead of folding them into the weights
    monkeypatch.setattr(model, "merge_and_unload", model.unload)
    with pytest.raises(ExportMismatchError, match="max abs diff"):
        export_model(model, tmp_path / "export", inputs_of(batch))
    assert not list((tmp_path / "export").glob("*.safetensors")), "a mismatching merge must not be saved"


def test_corrupted_adapter_export_is_caught_and_removed(models, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    real_save = export._save_base_model

    def corrupt_save(base, path):  # planted bug: the saved base is not the base that was trained against
        real_save(base, path)
        weights = load_file(path / "model.safetensors")
        key = next(k for k in weights if "word_embeddings" in k)
        # noise, not a constant: the embedding LayerNorm would cancel a constant shift
        weights[key] = weights[key] + 0.5 * torch.randn(
            weights[key].shape, generator=torch.Generator().manual_seed(0)
        )
        save_file(weights, path / "model.safetensors", metadata={"format": "pt"})

    monkeypatch.setattr(export, "_save_base_model", corrupt_save)
    torch.manual_seed(0)  # the fresh classifier head and virtual tokens: the same in any test order
    base, recipe = build("prompt_tuning", "classification", "bert", models)
    model = apply_method(base, recipe)
    batch = make_batch("classification", "bert", models["bert"])
    with pytest.raises(ExportMismatchError, match="max abs diff"):
        export_model(model, tmp_path / "export", inputs_of(batch))
    assert not any((tmp_path / "export").iterdir()), "a mismatching export must not be left behind"


def test_adapter_export_layout(models, tmp_path):
    import json

    base, recipe = build("prefix_tuning", "sft", "llama", models)
    model = apply_method(base, recipe)
    export_model(model, tmp_path / "out", inputs_of(make_batch("sft", "llama", models["llama"])))
    out = tmp_path / "out"
    meta = json.loads((out / EXPORT_META).read_text())
    assert meta["format"] == "adapter" and meta["peft_type"] == "PREFIX_TUNING"
    assert (out / "base" / "config.json").is_file() and (out / "base" / "model.safetensors").is_file()
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str((out / "base").resolve())


def test_prompt_tuning_init_from_text(models):
    from transformers import AutoTokenizer

    base, _ = build("prompt_tuning", "classification", "bert", models)
    recipe = make_recipe("prompt_tuning", "classification", models["bert"])
    recipe.method.prompt.init_text = "classify the sentiment"
    model = apply_method(base, recipe)
    # peft tokenizes the text as is (special tokens included), then cuts or repeats it to the prompt length
    ids = AutoTokenizer.from_pretrained(models["bert"])("classify the sentiment")["input_ids"]
    n = recipe.method.prompt.num_virtual_tokens
    prompt = model.prompt_encoder["default"].embedding.weight
    words = model.get_base_model().get_input_embeddings().weight
    torch.testing.assert_close(prompt, words[torch.tensor((ids * n)[:n])])


# --------------------------------------------------------------------------------------------- preflight

QLORA_NO_GPU = "qlora needs a CUDA GPU with bitsandbytes; this machine has none: use method.name=lora"


def test_check_supported_rejects_qlora_on_this_cpu_machine(models):
    with pytest.raises(MethodUnavailable) as err:
        check_supported(make_recipe("qlora", "classification", models["bert"]))
    assert str(err.value) == QLORA_NO_GPU


def test_check_supported_rejects_qlora_without_bitsandbytes(models, monkeypatch):
    monkeypatch.setattr(methods, "_bitsandbytes_available", lambda: False)
    with pytest.raises(MethodUnavailable, match="bitsandbytes"):
        check_supported(make_recipe("qlora", "classification", models["bert"]), cuda_available=True)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_check_supported_rejects_half_precision_without_gpu(precision, models, monkeypatch):
    monkeypatch.setattr(methods, "cpu_has_native_bf16", lambda: False)  # a CPU without AVX512-BF16/AMX
    recipe = make_recipe("lora", "classification", models["bert"], precision=precision)
    with pytest.raises(MethodUnavailable, match=f"training.precision={precision} needs a CUDA GPU"):
        check_supported(recipe)


def test_bf16_runs_as_autocast_on_a_cpu_with_native_bfloat16_but_not_under_deepspeed(models, monkeypatch):
    monkeypatch.setattr(methods, "cpu_has_native_bf16", lambda: True)
    check_supported(make_recipe("lora", "classification", models["bert"], precision="bf16"))
    with pytest.raises(MethodUnavailable, match="needs a CUDA GPU"):  # fp16 has no CPU path
        check_supported(make_recipe("lora", "classification", models["bert"], precision="fp16"))
    recipe = make_recipe("lora", "classification", models["bert"], precision="bf16")
    recipe = recipe.model_copy(
        update={"distributed": recipe.distributed.model_copy(update={"deepspeed": "zero2"})}
    )
    with pytest.raises(MethodUnavailable, match="distributed.deepspeed=none"):
        check_supported(recipe)


def test_native_bfloat16_is_read_from_the_cpu_flags():
    zen4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512vl\n"
    sapphire_rapids = "flags\t\t: fpu avx512f amx_bf16 amx_tile\n"
    older = "flags\t\t: fpu sse2 avx2 avx512f avx512vl\nmodel name\t: avx512_bf16 lookalike\n"
    assert methods.cpu_has_native_bf16(zen4) and methods.cpu_has_native_bf16(sapphire_rapids)
    assert not methods.cpu_has_native_bf16(older) and not methods.cpu_has_native_bf16("")


def test_check_supported_rejects_bf16_on_an_old_gpu(models, monkeypatch):
    monkeypatch.setattr(methods, "_bf16_supported", lambda: False)  # a pre-Ampere GPU, mocked
    recipe = make_recipe("full", "classification", models["bert"], precision="bf16")
    with pytest.raises(MethodUnavailable, match="bfloat16"):
        check_supported(recipe, cuda_available=True)
    check_supported(
        make_recipe("full", "classification", models["bert"], precision="fp16"), cuda_available=True
    )


@pytest.mark.parametrize("method", ["full", "lora", "prompt_tuning", "p_tuning", "prefix_tuning", "ia3"])
@pytest.mark.parametrize(("task", "arch"), TASKS, ids=[f"{t}-{a}" for t, a in TASKS])
def test_check_supported_accepts_cpu_methods(method, task, arch, models):
    check_supported(make_recipe(method, task, models[arch]))


def test_check_supported_rejects_prefix_tuning_without_past_key_values(tmp_path):
    from transformers import DistilBertConfig

    DistilBertConfig().save_pretrained(tmp_path)  # a config is all the preflight reads
    with pytest.raises(MethodUnavailable, match="past_key_values"):
        check_supported(make_recipe("prefix_tuning", "classification", tmp_path))
    check_supported(make_recipe("prompt_tuning", "classification", tmp_path))


def test_unknown_architecture_defaults_name_the_recipe_field(tmp_path):
    with pytest.raises(ValueError, match=r"method\.ia3\.target_modules"):
        methods.default_ia3_modules("no-such-arch")
    assert methods.default_ia3_modules("bert") == (["key", "value", "output.dense"], ["output.dense"])
    assert methods.default_ia3_modules("llama") == (["k_proj", "v_proj", "down_proj"], ["down_proj"])
    from transformers import GPT2Config

    GPT2Config().save_pretrained(tmp_path)  # gpt2: no tunery LoRA default
    with pytest.raises(MethodUnavailable, match=r"method\.lora\.target_modules"):
        check_supported(make_recipe("lora", "sft", tmp_path))


def test_ia3_feedforward_must_be_targets(models):
    recipe = make_recipe("ia3", "classification", models["bert"])
    recipe.method.ia3.target_modules = ["key", "value"]
    assert methods.ia3_modules(recipe, "bert") == (["key", "value"], [])
    recipe.method.ia3.feedforward_modules = ["output.dense"]
    with pytest.raises(ValueError, match=r"method\.ia3\.feedforward_modules"):
        methods.ia3_modules(recipe, "bert")


# ------------------------------------------------------------------------------------------ load options


def test_dropout_override_lands_in_config_and_modules(models):
    recipe = make_recipe("lora", "classification", models["bert"], dropout=0.25)
    model = load_base_model(str(models["bert"]), "classification", LABELS, recipe)
    for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        assert getattr(model.config, field) == 0.25
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.25}
    assert model.config.id2label == dict(enumerate(LABELS)) and model.num_labels == 3

    llama = load_base_model(
        str(models["llama"]), "sft", None, make_recipe("full", "sft", models["llama"], dropout=0.3)
    )
    assert llama.config.attention_dropout == 0.3


@pytest.mark.parametrize("method", ["full", "lora", "prompt_tuning"])
def test_gradient_checkpointing_is_enabled_and_trains(method, models):
    base, recipe = build(method, "classification", "bert", models, gradient_checkpointing=True)
    assert base.is_activation_checkpointing
    model = apply_method(base, recipe)
    model.train()
    model(**make_batch("classification", "bert", models["bert"])).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values()), "checkpointing cut the graph"
    # lora_A gets a zero gradient while lora_B is zero (first step); every other tensor a non-zero one
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_A" not in n)


def test_prefix_tuning_with_gradient_checkpointing_is_rejected(models):
    recipe = make_recipe("prefix_tuning", "classification", models["bert"], gradient_checkpointing=True)
    with pytest.raises(MethodUnavailable, match="gradient_checkpointing"):
        check_supported(recipe)


def test_bf16_checkpoint_loads_as_float32(models, tmp_path):
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(models["llama"]).to(torch.bfloat16).save_pretrained(tmp_path)
    model = load_base_model(str(tmp_path), "sft", None, make_recipe("lora", "sft", tmp_path))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


# ----------------------------------------------------------------------------------- qlora, GPU mocked


def _pretend_qlora_can_run(monkeypatch) -> None:
    """A GPU with bitsandbytes is MOCKED: only the availability checks are replaced."""
    monkeypatch.setattr(methods, "_cuda_available", lambda: True)
    monkeypatch.setattr(methods, "_bitsandbytes_available", lambda: True)


def _record_from_pretrained(monkeypatch, quantize: bool) -> list[dict]:
    """Record the kwargs of AutoModelForSequenceClassification.from_pretrained.

    quantize=True passes the call on unchanged (transformers then needs the real bitsandbytes);
    quantize=False loads the same model without the 4-bit config, as this machine cannot quantise.
    """
    from transformers import AutoModelForSequenceClassification

    real = AutoModelForSequenceClassification.from_pretrained
    calls: list[dict] = []

    def spy(path, **kwargs):
        calls.append(kwargs)
        if not quantize:
            kwargs = {k: v for k, v in kwargs.items() if k not in ("quantization_config", "device_map")}
        return real(path, **kwargs)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", spy)
    return calls


def _assert_bnb_config(calls: list[dict]) -> None:
    bnb = calls[0]["quantization_config"]
    assert type(bnb).__name__ == "BitsAndBytesConfig"
    assert bnb.load_in_4bit and not bnb.load_in_8bit
    assert bnb.bnb_4bit_quant_type == "fp4" and bnb.bnb_4bit_use_double_quant is False
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16
    assert calls[0]["device_map"] == {"": 0}


def _qlora_recipe(models, **training) -> Recipe:
    recipe = make_recipe("qlora", "classification", models["bert"], **training)
    recipe.method.quantization.quant_type = "fp4"
    recipe.method.quantization.double_quant = False
    return recipe


def test_qlora_passes_bitsandbytes_config_gpu_mocked(models, monkeypatch):
    _pretend_qlora_can_run(monkeypatch)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    calls = _record_from_pretrained(monkeypatch, quantize=True)
    recipe = _qlora_recipe(models)
    check_supported(recipe)  # passes with the mocked GPU
    with pytest.raises(ImportError):  # the real transformers still needs the real bitsandbytes / CUDA
        load_base_model(str(models["bert"]), "classification", LABELS, recipe)
    _assert_bnb_config(calls)


def test_qlora_prepares_and_wraps_gpu_mocked(models, monkeypatch):
    _pretend_qlora_can_run(monkeypatch)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    calls = _record_from_pretrained(monkeypatch, quantize=False)
    recipe = _qlora_recipe(models, gradient_checkpointing=True)
    base = load_base_model(str(models["bert"]), "classification", LABELS, recipe)
    _assert_bnb_config(calls)
    assert not any(p.requires_grad for p in base.parameters()), "prepare_model_for_kbit_training freezes"
    assert base.is_activation_checkpointing
    model = apply_method(base, recipe)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in names) and any("classifier.modules_to_save" in n for n in names)


def test_qlora_export_merges_into_dequantized_base_gpu_mocked(models, tmp_path, monkeypatch):
    base, recipe = build("lora", "classification", "bert", models)
    model = apply_method(base, recipe)
    _plant_adapter_weights(model)
    batch = make_batch("classification", "bert", models["bert"])
    expected = logits(model, batch)
    monkeypatch.setattr(export, "_is_quantized", lambda m: True)  # the 4-bit base is MOCKED
    result = export_model(model, tmp_path / "export", inputs_of(batch))
    assert result["format"] == "merged" and result["max_abs_diff"] < 1e-4
    assert result["quantization_gap"] < 1e-4  # no real quantisation here, so no gap
    loaded = load_exported(tmp_path / "export", "classification")
    assert (logits(loaded, batch) - expected).abs().max() < 1e-4


def test_allowed_difference_scales_with_the_logits():
    from tunery.training.export import RELATIVE_TOLERANCE, allowed_difference

    smollm_like = torch.tensor([[-38.8, 0.0, 12.0]])  # the packaged SmolLM2's largest logit is ~39
    # the merge difference seen on GSM8K-style data (r=8, 384 tokens) failed the old absolute 1e-4
    assert 1.292e-4 <= allowed_difference(smollm_like, 1e-4) == pytest.approx(38.8 * RELATIVE_TOLERANCE)
    assert allowed_difference(torch.tensor([[0.5, -0.2]]), 1e-4) == 1e-4  # small logits: the floor
    assert allowed_difference(torch.tensor([[float("nan"), 1.0]]), 1e-4) < 0  # NaN allows nothing


GSM8K_STYLE = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?\n"
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "task"), [("minilm", "classification"), ("smollm2", "sft")])
def test_lora_export_on_the_packaged_models(name, task, tmp_path, monkeypatch):
    """LoRA with trained-size adapters merges within the bound on both packaged models (fp32, 384 tokens
    for SmolLM2's 49k vocabulary), and a merge that drops the adapters still fails the check."""
    from transformers import AutoTokenizer

    from tunery.models import resolve_model

    path = resolve_model(name)
    recipe = make_recipe("lora", task, path)
    recipe = recipe.model_copy(
        update={
            "method": recipe.method.model_copy(
                update={"lora": recipe.method.lora.model_copy(update={"r": 8})}
            )
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    length = 384 if task == "sft" else 128
    batch = dict(tokenizer([GSM8K_STYLE * 3] * 2, truncation=True, max_length=length, return_tensors="pt"))
    torch.manual_seed(0)
    model = apply_method(
        load_base_model(path, task, LABELS if task == "classification" else None, recipe), recipe
    )
    _plant_adapter_weights(model)
    result = export_model(model, tmp_path / "good", batch)
    assert result["format"] == "merged" and result["max_abs_diff"] > 0
    meta = json_of(tmp_path / "good" / EXPORT_META)
    assert result["max_abs_diff"] <= meta["allowed_diff"]

    torch.manual_seed(0)
    model = apply_method(
        load_base_model(path, task, LABELS if task == "classification" else None, recipe), recipe
    )
    _plant_adapter_weights(model)
    monkeypatch.setattr(model, "merge_and_unload", model.unload)  # planted bug: the adapters are dropped
    with pytest.raises(ExportMismatchError, match="max abs diff"):
        export_model(model, tmp_path / "bad", batch)


def json_of(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def test_the_export_check_holds_a_bounded_number_of_logits_and_still_catches_a_bad_merge(
    models, tmp_path, monkeypatch
):
    """16 rows of a LM with a large output are checked on the rows that fit the logit budget (one at least),
    and a merge that drops the adapters is caught on those rows as well."""
    from tunery.training import export

    base, recipe = build("lora", "sft", "llama", models)
    seen = []
    real_logits = export._logits
    monkeypatch.setattr(
        export, "_logits", lambda m, inputs: seen.append(inputs["input_ids"].shape) or real_logits(m, inputs)
    )
    width = base.get_output_embeddings().weight.shape[0]
    batch = make_batch("sft", "llama", models["llama"])
    rows = 16
    ids = batch["input_ids"][:1].repeat(rows, 1)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    budget_rows = 3
    monkeypatch.setattr(export, "CHECK_LOGITS_BUDGET", budget_rows * ids.shape[1] * width + 1)

    model = apply_method(base, recipe)
    _plant_adapter_weights(model)
    assert export_model(model, tmp_path / "good", inputs)["format"] == "merged"
    assert seen and all(shape[0] == budget_rows for shape in seen), seen

    base, recipe = build("lora", "sft", "llama", models)
    model = apply_method(base, recipe)
    _plant_adapter_weights(model)
    monkeypatch.setattr(model, "merge_and_unload", model.unload)
    monkeypatch.setattr(export, "CHECK_LOGITS_BUDGET", 1)  # even a budget below one row keeps one row
    seen.clear()
    with pytest.raises(ExportMismatchError, match="max abs diff"):
        export_model(model, tmp_path / "bad", inputs)
    assert seen and all(shape[0] == 1 for shape in seen), seen
