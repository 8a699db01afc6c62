"""Compact models: head pruning, layer dropping, magnitude pruning and int8, saved and loaded back exactly;
and the distillation loss and training job that trains a student from a teacher's logits."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from tests.training.test_loop import LEARNING_RATES, ListLogger, recipe_for, write_splits
from tunery.layout import RunLayout
from tunery.serving.inference import TextClassifier
from tunery.training import compact
from tunery.training.distill import TEACHER_LOGITS, distillation_loss
from tunery.training.export import load_exported
from tunery.training.loop import train


def classifier(path, layers: int | None = None):
    torch.manual_seed(1)
    extra = {"num_hidden_layers": layers} if layers else {}
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, **extra)
    return model.eval()


def batch():
    torch.manual_seed(2)
    ids = torch.randint(1000, 2000, (3, 9))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_removing_heads_equals_masking_their_outputs_and_reloads_exactly(tiny_bert, tmp_path):
    model = classifier(tiny_bert)
    masked = classifier(tiny_bert)
    # a head's contribution ends in its slice of the value projection: zeroing it is removing the head
    inner, _ = compact.attention_parts(compact.encoder_layers(masked)[1])
    size = inner.attention_head_size
    with torch.no_grad():
        inner.value.weight[:size].zero_()
        inner.value.bias[:size].zero_()
        expected = masked(**batch()).logits

    compact.prune_heads(model, {1: [0]})
    assert compact.heads_of(model) == [2, 1]
    with torch.no_grad():
        assert torch.allclose(model(**batch()).logits, expected, atol=1e-6)
    assert compact.parameter_count(model) < compact.parameter_count(classifier(tiny_bert))

    model.save_pretrained(tmp_path / "pruned")
    assert compact.is_compact(tmp_path / "pruned")
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())[compact.PRUNED_HEADS] == {"1": [0]}
    again = compact.load_compact(tmp_path / "pruned", AutoModelForSequenceClassification)
    with torch.no_grad():
        assert torch.equal(again(**batch()).logits, model(**batch()).logits)


def test_a_second_removal_records_the_original_head_indices(tmp_path):
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=32,
        num_labels=2,
    )
    model = AutoModelForSequenceClassification.from_config(config).eval()
    compact.prune_heads(model, {0: [1]})  # heads now 0, 2, 3
    compact.prune_heads(model, {0: [1]})  # the current head 1 is the original head 2
    assert getattr(model.config, compact.PRUNED_HEADS) == {"0": [1, 2]}
    with pytest.raises(compact.CompactError, match="one must stay"):
        compact.prune_heads(model, {0: [0, 1]})
    model.save_pretrained(tmp_path / "m")
    again = compact.load_compact(tmp_path / "m", AutoModelForSequenceClassification)
    assert compact.heads_of(again) == [2]


def test_keeping_layers_copies_them_and_leaves_the_original_alone(tiny_bert):
    assert compact.evenly_spaced(6, 3) == [1, 3, 5]
    assert compact.evenly_spaced(12, 4) == [2, 5, 8, 11]
    with pytest.raises(compact.CompactError):
        compact.evenly_spaced(2, 3)
    model = classifier(tiny_bert)
    smaller = compact.keep_layers(model, [1])
    assert len(compact.encoder_layers(smaller)) == 1 and smaller.config.num_hidden_layers == 1
    assert len(compact.encoder_layers(model)) == 2
    kept = compact.encoder_layers(smaller)[0].state_dict()
    for name, value in compact.encoder_layers(model)[1].state_dict().items():
        assert torch.equal(kept[name], value), name
    with pytest.raises(compact.CompactError):
        compact.keep_layers(model, [0, 0])


def test_int8_is_smaller_close_to_fp32_and_reloads_bit_for_bit(tmp_path):
    from tunery.models import resolve_model

    model = classifier(resolve_model("minilm"))
    model.save_pretrained(tmp_path / "fp32")
    quantized = compact.quantize_int8(model)
    compact.save_quantized(quantized, tmp_path / "int8")
    assert compact.is_compact(tmp_path / "int8") and not compact.is_compact(tmp_path / "fp32")
    # the linear layers' weights shrink 4x; the word embeddings (half of MiniLM's weights) stay fp32
    linear = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear))
    saved = compact.folder_bytes(tmp_path / "fp32") - compact.folder_bytes(tmp_path / "int8")
    assert saved > 0.7 * linear, (saved, linear)
    with torch.no_grad():
        reference, approx = model(**batch()).logits, quantized(**batch()).logits
        again = compact.load_compact(tmp_path / "int8", AutoModelForSequenceClassification)
        assert torch.equal(again(**batch()).logits, approx)
    assert torch.allclose(reference, approx, atol=0.1), (reference, approx)
    assert not torch.equal(reference, approx)  # it really runs int8 kernels


def test_magnitude_pruning_zeroes_the_smallest_encoder_weights_only(tiny_bert):
    model = classifier(tiny_bert)
    head = model.classifier.weight.detach().clone()
    weights = [m.weight for m in compact.encoder_layers(model).modules() if isinstance(m, torch.nn.Linear)]
    everything = torch.cat([w.detach().abs().flatten() for w in weights])
    threshold = everything.kthvalue(int(0.6 * everything.numel())).values
    report = compact.magnitude_prune(model, 0.6)
    assert report["sparsity"] == pytest.approx(0.6, abs=1e-3)
    pruned = [m.weight for m in compact.encoder_layers(model).modules() if isinstance(m, torch.nn.Linear)]
    survivors = torch.cat([w.detach().abs().flatten() for w in pruned])
    assert float(survivors[survivors > 0].min()) >= float(threshold) - 1e-7
    assert torch.equal(model.classifier.weight, head)
    assert not any(name.endswith("_orig") for name, _ in model.named_parameters())  # permanent
    with pytest.raises(compact.CompactError):
        compact.magnitude_prune(model, 1.0)


def test_the_distillation_loss_is_the_weighted_sum_of_its_two_terms():
    student = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    teacher = torch.tensor([[0.0, 1.0], [3.0, -2.0]])
    labels = torch.tensor([0, 1])
    t = 2.0
    ce = torch.nn.functional.cross_entropy(student, labels)
    p = torch.softmax(teacher / t, -1)
    q = torch.softmax(student / t, -1)
    kl = float((p * (p.log() - q.log())).sum(-1).mean())
    got = distillation_loss(student, teacher, labels, alpha=0.3, temperature=t)
    assert float(got) == pytest.approx(0.3 * float(ce) + 0.7 * t * t * kl, rel=1e-6)
    assert float(distillation_loss(student, teacher, labels, 1.0, t)) == pytest.approx(float(ce))
    assert float(distillation_loss(student, student, labels, 0.0, t)) == pytest.approx(0.0, abs=1e-7)
    assert math.isfinite(float(got))


def test_a_student_trained_on_teacher_logits_alone_follows_the_teacher_not_the_labels(tmp_path):
    """alpha 0: the labels carry no weight; a teacher that says the opposite of every label is followed."""
    from tunery.models import resolve_model

    layout: RunLayout = write_splits(tmp_path)
    train_rows = pd.read_parquet(layout.split("train"))
    flipped = np.where(train_rows["label"] == "pos", -4.0, 4.0)  # logits [-v, v] for labels neg, pos
    train_rows[TEACHER_LOGITS] = [[float(-v), float(v)] for v in flipped]
    train_rows.to_parquet(layout.teacher_outputs)
    recipe = recipe_for(
        resolve_model("minilm"), "full", tmp_path, learning_rate=LEARNING_RATES["full"], max_steps=60
    )
    logger = ListLogger()
    model_dir = train(recipe, layout, logger, distillation={"alpha": 0.0, "temperature": 1.0})

    summary = json.loads((layout.train_dir / "metrics.json").read_text())
    assert summary["global_steps"] == 60
    # validation is plain cross-entropy against the true labels: the student learnt the teacher's opposite
    assert summary["validation"]["accuracy"] <= 0.1, summary["validation"]
    predictions = TextClassifier(model_dir).predict(
        ["the film was great number 1", "the film was awful number 3"]
    )
    assert list(predictions) == ["neg", "pos"]
    reloaded = load_exported(model_dir, "classification")
    assert not compact.is_compact(model_dir) and reloaded is not None


def test_distillation_without_teacher_outputs_is_refused(tmp_path, tiny_bert):
    layout = write_splits(tmp_path)
    recipe = recipe_for(tiny_bert, "full", tmp_path)
    with pytest.raises(ValueError, match="teacher"):
        train(recipe, layout, distillation={"alpha": 0.5, "temperature": 2.0})


def test_a_head_pruned_model_trains_further_and_serves_with_its_shapes(tmp_path, tiny_bert):
    from transformers import AutoTokenizer

    model = classifier(tiny_bert)
    compact.prune_heads(model, {0: [1]})
    model.save_pretrained(tmp_path / "pruned")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "pruned")
    layout = write_splits(tmp_path)
    recipe = recipe_for(tmp_path / "pruned", "full", tmp_path, max_steps=4)
    model_dir = train(recipe, layout)
    assert compact.is_compact(model_dir)
    served = load_exported(model_dir, "classification")
    assert compact.heads_of(served) == [1, 2]
    assert len(TextClassifier(model_dir).predict(["the film was great number 1"])) == 1


def test_an_int8_model_is_refused_as_a_training_base(tmp_path, tiny_bert):
    from transformers import AutoTokenizer

    from tunery.training.methods import MethodUnavailable, check_supported

    compact.save_quantized(compact.quantize_int8(classifier(tiny_bert)), tmp_path / "int8")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "int8")
    layout = write_splits(tmp_path)
    recipe = recipe_for(tmp_path / "int8", "full", tmp_path, max_steps=2)
    with pytest.raises(MethodUnavailable, match="int8"):  # the preflight (CLI, launch) says so first
        check_supported(recipe, cuda_available=False)
    with pytest.raises(compact.CompactError, match="int8"):  # and the loader refuses it on its own
        train(recipe, layout)
