"""Knowledge distillation inside the normal training job: a student learns from a teacher's outputs.

The loss of a training batch is ``alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher || student)``
with both distributions softened at temperature ``T`` (Hinton et al., 2015; the ``T^2`` keeps the soft term's
gradients on the scale of the hard one's). The teacher's logits are computed once, before the job starts,
for every training row (and for unlabeled rows, which then carry the teacher's label):
``RunLayout.teacher_outputs`` holds ``text``, ``label`` and ``teacher_logits``. Validation is the plain
cross-entropy on the validation split, comparable with any other run's.
"""

from __future__ import annotations

import pandas as pd

TEACHER_LOGITS = "teacher_logits"  # the column of RunLayout.teacher_outputs, and the batch key


def distillation_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float):
    """``alpha * CE + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean."""
    import torch.nn.functional as F

    hard = F.cross_entropy(student_logits, labels)
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits.to(student_logits.dtype) / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return alpha * hard + (1.0 - alpha) * temperature**2 * soft


def distilling(trainer_class, alpha: float, temperature: float):
    """``trainer_class`` whose training loss is :func:`distillation_loss` when a batch carries teacher logits
    (evaluation batches do not: their loss is the model's own cross-entropy)."""

    class DistillationTrainer(trainer_class):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if TEACHER_LOGITS not in inputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            teacher = inputs.pop(TEACHER_LOGITS)
            outputs = model(**inputs)
            loss = distillation_loss(outputs.logits, teacher, inputs["labels"], alpha, temperature)
            return (loss, outputs) if return_outputs else loss

    return DistillationTrainer


def teacher_dataset(frame: pd.DataFrame, tokenizer, label_ids: dict[str, int], max_length: int):
    """The tokenised training rows with their teacher logits (a float list per row)."""
    from datasets import Dataset

    unknown = sorted(set(frame["label"]) - set(label_ids))
    if unknown:
        raise ValueError(f"teacher outputs carry labels the student does not have: {unknown[:5]}")
    data = Dataset.from_dict(
        {
            "text": frame["text"].tolist(),
            "labels": frame["label"].map(label_ids).tolist(),
            TEACHER_LOGITS: [list(map(float, row)) for row in frame[TEACHER_LOGITS]],
        }
    )
    return data.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["text"],
    )
