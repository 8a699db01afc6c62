"""Where a run keeps its files. Stages exchange these paths, never in-memory tables or models."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SPLITS = ("train", "validation", "test")  # the split names, in order; file names are f"{split}.parquet"

# ``data/held_out/<name>/``: a held-out evaluation set's own data folder (see RunLayout.held_out).
HELD_OUT = "held_out"

# Inside a checkpoint folder: written once every rank has saved its part (a folder without it is a crash
# mid-save and is never resumed from).
COMPLETE_MARKER = "tunery_complete"

# A base model converted once into a plain folder (the packaged GGUF): written last, so a folder without
# it is an interrupted conversion and is redone.
CONVERTED_MARKER = ".tunery-complete"

# The model folder (``model/``): labels, task, cleaning and base of the trained model, read by serving.
MODEL_META = "tunery_model.json"
# How the model folder was exported (full / merged / adapter) and the numerical check's result.
EXPORT_META = "tunery_export.json"
# An ``adapter`` export keeps the frozen base and the peft adapter in these sub-folders.
BASE_DIR = "base"
ADAPTER_DIR = "adapter"


@dataclass(frozen=True)
class HeldOutLayout:
    """The folder of one held-out evaluation set: read and cleaned like the run's data, never split."""

    root: Path

    @property
    def ingested(self) -> Path:
        return self.root / "ingested.parquet"

    @property
    def cleaned(self) -> Path:
        return self.root / "clean.parquet"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine.jsonl"


@dataclass(frozen=True)
class RunLayout:
    """The folder of one pipeline run and the fixed names of what each stage writes into it."""

    root: Path

    @classmethod
    def create(cls, workdir: str | Path, name: str) -> RunLayout:
        """Make a new, uniquely named run folder under ``workdir/runs``."""
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
        root = Path(workdir) / "runs" / f"{slug}-{stamp}"
        root.mkdir(parents=True, exist_ok=False)
        return cls(root=root)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def ingested(self) -> Path:
        return self.data_dir / "ingested.parquet"

    @property
    def cleaned(self) -> Path:
        return self.data_dir / "clean.parquet"

    @property
    def quarantine(self) -> Path:
        return self.data_dir / "quarantine.jsonl"

    @property
    def data_report(self) -> Path:
        return self.data_dir / "report.json"

    def split(self, name: str) -> Path:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self.data_dir / "splits" / f"{name}.parquet"

    def held_out(self, name: str) -> HeldOutLayout:
        """The data files of a held-out set (``data.test_source``/``validation_source``: ``test``,
        ``validation``; ``evaluation.sets``: its name), in ``data/held_out/<name>/``."""
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", name):
            raise ValueError(f"bad held-out set name {name!r}")
        return HeldOutLayout(self.data_dir / HELD_OUT / name)

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def checkpoints(self) -> Path:
        """Resumable checkpoints of the training job, ``checkpoint-<step>`` folders."""
        return self.train_dir / "checkpoints"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def metrics(self) -> Path:
        return self.eval_dir / "metrics.json"

    @property
    def usage(self) -> Path:
        """``usage.jsonl``: a line per finished stage attempt and training rank (:mod:`tunery.ops.usage`)."""
        return self.root / "usage.jsonl"

    @property
    def start_dir(self) -> Path:
        """The registered model training starts from, downloaded (``model.init_from: NAME@champion``)."""
        return self.root / "start"

    @property
    def parent(self) -> Path:
        """``parent.json``: which registered version (or run) ``start_dir`` is (the new model's lineage)."""
        return self.root / "parent.json"

    @property
    def teacher_outputs(self) -> Path:
        """A distilled student's training rows with the teacher's logits (``tunery.training.distill``)."""
        return self.data_dir / "teacher.parquet"


def sub_layout(parent: RunLayout, folder: Path) -> RunLayout:
    """A run folder inside ``parent`` (a search trial, a compressed candidate) with the parent's split files
    hard-linked in (copied where links fail): it trains on exactly the parent's data."""
    layout = RunLayout(folder)
    for name in SPLITS:
        source, target = parent.split(name), layout.split(name)
        if source.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(source, target)
    return layout
