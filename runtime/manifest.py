"""The manifest's schema and path confinement: what ``load_bundle`` checks before it opens a file.

:func:`validate_manifest` walks the manifest once against the tables below (``MANIFEST``, and
the ``GRAPH`` / ``KV_CACHE`` / ``GENERATION`` objects inside it). Each :class:`Field` says which
JSON types a value may have, whether it is required, what a good value is, and whether it is a
path inside the bundle. Fields the tables do not name are allowed, so a newer exporter may add
optional ones; adding a field here is one line. Every problem is one :class:`BundleError` line
naming the field (``graphs[1].path``, ``generation.max_prompt_tokens``).

Paths (a graph's ``path``, ``ort`` and ``external_data``, every key of ``files``, and any
field marked ``path=True``) must be relative, in ``/`` form, without ``.``/``..`` parts, and must resolve
(symlinks followed) inside the bundle directory: :func:`confine` refuses anything else before
the file is opened.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from alter_edge.errors import BundleError
from alter_edge.io import shown as _shown

from .contract import (
    CONTRACT,
    CROSS_KEY,
    CROSS_VALUE,
    DECODER_ROLE,
    ENCODER_ROLE,
    PAST_KEY,
    PAST_VALUE,
    PRESENT_KEY,
    PRESENT_VALUE,
    SEQ2SEQ_CONTRACT,
)

BUNDLE_FORMAT = "alter-edge-bundle"
SUPPORTED_FORMAT_VERSIONS = (2,)
PRECISIONS = ("fp32", "int8", "int4")
REQUIRED_FILES = ("tasks.json", "tokenizer.json")

DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_PROMPT_TOKENS = 32, 320  # a bundle without `generation`
STR, INT, LIST, DICT, NULL = (str,), (int,), (list,), (dict,), (type(None),)
DEFAULT_KV_NAMES = {"past_key": PAST_KEY, "past_value": PAST_VALUE,
                    "present_key": PRESENT_KEY, "present_value": PRESENT_VALUE}
# Far above any model this runtime serves (SmolLM2-135M: 30 layers, 3 kv heads of 64), far below
# what would exhaust memory when the loader builds names and caches from them.
MAX_LAYERS, MAX_HEADS, MAX_HEAD_DIM, MAX_TOKENS = 1024, 1024, 8192, 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object",
               type(None): "null", float: "a number", bool: "true/false"}

Check = Callable[[object], "str | None"]  # what is wrong with a value, or None


@dataclass(frozen=True)
class Field:
    types: tuple[type, ...]
    required: bool = False
    check: Check | None = None
    path: bool = False  # a file of the bundle, relative to it (confined)
    fields: dict[str, Field] | None = None  # an object's own fields
    items: Field | None = None  # each item of a list, or each value of an object
    path_keys: bool = False  # an object whose keys are paths inside the bundle (``files``)


def at_least(low: int) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}"


def between(low: int, high: int) -> Check:
    """Bounded: a loader builds per-layer names and allocates caches from these numbers, so
    ``num_layers: 10**9`` must be refused, not run out of memory."""
    return lambda v: None if low <= v <= high else f"must be in {low}..{high}"


def one_of(allowed: Sequence[str]) -> Check:
    return lambda v: None if v in allowed else f"must be one of {', '.join(allowed)}"


def one_of_ints(allowed: Sequence[int]) -> Check:
    return lambda v: None if v in allowed else f"must be one of {', '.join(map(str, allowed))}"


def sha256_hex(v: object) -> str | None:
    return None if _SHA256.fullmatch(v) else "must be a sha256 (64 lowercase hex digits)"


def non_empty(v: object) -> str | None:
    return None if v else "must not be empty"


def layer_pattern(v: str) -> str | None:
    """A KV-cache name pattern: ``{i}`` (the layer) and no other replacement field."""
    if "{i}" not in v:
        return "must contain {i} (the layer index)"
    try:
        v.format(i=0)
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        return f"may hold only the field {{i}} ({e!r})"
    return None


GRAPH = {
    "path": Field(STR, required=True, path=True),
    "task": Field(STR + NULL),
    "precision": Field(STR, check=one_of(PRECISIONS)),
    "sha256": Field(STR, required=True, check=sha256_hex),
    "bytes": Field(INT, check=at_least(0)),
    "inputs": Field(LIST, items=Field(STR)),
    "outputs": Field(LIST, items=Field(STR)),
    "ort": Field(STR + NULL, path=True),
    "mode": Field(STR, check=one_of(("multitask", "task", "merged"))),
    "external_data": Field(LIST, items=Field(STR, path=True)),  # weight files, listed in `files`
    "quantization": Field(DICT, fields={"matrix_bits": Field(DICT, items=Field(INT, check=one_of_ints((4, 8))))}),
    "role": Field(STR, check=one_of((ENCODER_ROLE, DECODER_ROLE))),  # encoder-decoder bundles only
}
KV_CACHE = {
    "num_layers": Field(INT, required=True, check=between(1, MAX_LAYERS)),
    "num_kv_heads": Field(INT, required=True, check=between(1, MAX_HEADS)),
    "head_dim": Field(INT, required=True, check=between(1, MAX_HEAD_DIM)),
    **{name: Field(STR, check=layer_pattern)
       for name in ("past_key", "past_value", "present_key", "present_value")},
    # positions the graphs' rotary cache covers: every prompt plus its new tokens must fit
    "max_sequence_length": Field(INT, required=True, check=between(2, MAX_TOKENS)),
}
ARCHITECTURES = ("decoder", "encoder-decoder")  # manifest "architecture"; absent: "decoder"
SEQ2SEQ = {  # ``runtime.contract.Seq2SeqLayout.to_dict()``
    "self": Field(DICT, required=True, fields=KV_CACHE),
    "cross": Field(DICT, required=True, fields={name: Field(STR, check=layer_pattern)
                                                for name in ("cross_key", "cross_value")}),
}
GENERATION = {
    "max_new_tokens": Field(INT, check=between(1, MAX_TOKENS)),
    "max_prompt_tokens": Field(INT, check=between(1, MAX_TOKENS)),
}
MANIFEST = {
    "format": Field(STR, required=True),
    "format_version": Field(INT, required=True),
    "created": Field(STR),
    "checkpoint_sha256": Field(STR + NULL),
    "base_model": Field(DICT),
    "tasks": Field(LIST, items=Field(STR)),
    "opset": Field(INT),
    "graph_contract": Field(STR),
    "eos_token_id": Field(INT, required=True, check=at_least(0)),
    "pad_token_id": Field(INT, required=True, check=at_least(0)),
    "kv_cache": Field(DICT, required=True, fields=KV_CACHE),
    "architecture": Field(STR, check=one_of(ARCHITECTURES)),
    "decoder_start_token_id": Field(INT, check=at_least(0)),
    "seq2seq": Field(DICT, fields=SEQ2SEQ),
    "generation": Field(DICT, fields=GENERATION),
    "graphs": Field(LIST, required=True, check=non_empty, items=Field(DICT, fields=GRAPH)),
    "files": Field(DICT, required=True, items=Field(STR, check=sha256_hex), path_keys=True),
}


def check_format(manifest: dict, root: Path) -> None:
    """``format`` and ``format_version`` are ones this runtime reads."""
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{root}/manifest.json: format is {_shown(manifest.get('format'))}, "
                          f"expected {BUNDLE_FORMAT!r}")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):  # JSON true == 1 in Python
        got = ("true" if version else "false") if isinstance(version, bool) else (
            f"{_TYPE_NAMES.get(type(version), type(version).__name__)} {_shown(version)}")
        raise BundleError(f"{root}/manifest.json: format_version must be an integer, got {got}; this runtime "
                          f"reads {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}")
    if version == 1:
        raise BundleError(f"{root}: bundle format_version 1 (one traced graph per task) is no longer read; "
                          "re-export the checkpoint with this alter-edge to get a format 2 bundle")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            f"{root}: bundle format_version {_shown(version)} is not supported; this runtime reads "
            f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))} (re-export, or upgrade alter-edge)"
        )


def validate_manifest(manifest: object, root: Path, schema: dict[str, Field] = MANIFEST) -> None:
    """Check ``manifest`` against ``schema``, confine its paths to ``root`` and check that each
    graph's listed inputs/outputs match the KV-cache layout, that the required files are listed
    and that prompts fit the graphs' positions; raise one BundleError line."""
    root = Path(root)
    where = f"{root}/manifest.json"
    confine(root, "manifest.json", "manifest.json itself")  # not a symlink leading out
    _check_object(manifest, schema, root, where, "")
    seq2seq = check_architecture(manifest, where)
    missing = [f for f in REQUIRED_FILES if f not in manifest["files"]]
    if missing:
        raise BundleError(f"{where}: files does not list {', '.join(missing)}")
    kv = manifest["kv_cache"]
    prompt = manifest.get("generation", {}).get("max_prompt_tokens", DEFAULT_MAX_PROMPT_TOKENS)
    if not seq2seq and prompt >= kv["max_sequence_length"]:  # an encoder-decoder's prompt is not in it
        raise BundleError(f"{where}: generation.max_prompt_tokens {prompt} leaves no room for a new token "
                          f"in kv_cache.max_sequence_length {kv['max_sequence_length']} (it must be smaller)")
    for i, g in enumerate(manifest["graphs"]):
        for j, ext in enumerate(g.get("external_data") or ()):
            if ext not in manifest["files"]:
                raise BundleError(f"{where}: graphs[{i}].external_data[{j}] {_shown(ext)} (a weight file of "
                                  f"{_shown(g['path'])}) is not listed in files")
        if seq2seq:
            check_pair_entry(g, i, manifest["seq2seq"], where)
            continue
        for key, role in (("inputs", "past"), ("outputs", "present")):
            if key in g:
                problem = kv_mismatch(g[key], kv, role)
                if problem:
                    raise BundleError(f"{where}: graphs[{i}] ({_shown(g['path'])}) {key}: {problem}")


def check_architecture(manifest: dict, where: str) -> bool:
    """The contract fits the architecture (a decoder's ``gqa-right-pad``, an encoder-decoder's
    ``t5-mha`` with its ``seq2seq`` layout and ``decoder_start_token_id``); True for an
    encoder-decoder."""
    arch = manifest.get("architecture", "decoder")
    contract = SEQ2SEQ_CONTRACT if arch == "encoder-decoder" else CONTRACT
    if manifest.get("graph_contract", contract) != contract:
        raise BundleError(f"{where}: graph_contract {_shown(manifest.get('graph_contract'))} is not "
                          f"{contract!r}, the one this runtime runs for architecture {arch!r}")
    if arch != "encoder-decoder":
        return False
    for key in ("seq2seq", "decoder_start_token_id"):
        if key not in manifest:
            raise BundleError(f"{where}: an encoder-decoder manifest lacks {key!r}")
    return True


def check_pair_entry(g: dict, i: int, layout: dict, where: str) -> None:
    """An encoder-decoder graph entry: its role, and its listed names against the layout (an
    encoder outputs the cross cache; a decoder reads the past and the cross cache, outputs the
    present)."""
    if "role" not in g:
        raise BundleError(f"{where}: graphs[{i}] ({_shown(g['path'])}) lacks its role (encoder or decoder)")
    kv = layout["self"]
    cross = {"past_key": layout["cross"].get("cross_key", CROSS_KEY),
             "past_value": layout["cross"].get("cross_value", CROSS_VALUE), "num_layers": kv["num_layers"]}
    checks = [("outputs", cross, "past")] if g["role"] == ENCODER_ROLE else \
        [("inputs", kv, "past"), ("inputs", cross, "past"), ("outputs", kv, "present")]
    for key, names, role in checks:
        problem = kv_mismatch(g[key], names, role) if key in g else None
        if problem:
            raise BundleError(f"{where}: graphs[{i}] ({_shown(g['path'])}) {key}: {problem}")


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES[t] for t in types)


def _check_value(value: object, f: Field, root: Path, where: str, name: str) -> None:
    # JSON true/false are Python bools, which are ints: never accept one for an integer
    if not isinstance(value, f.types) or (isinstance(value, bool) and bool not in f.types):
        got = _TYPE_NAMES.get(type(value), type(value).__name__)
        raise BundleError(f"{where}: {name} must be {_type_name(f.types)}, got {got} {_shown(value)}")
    if value is None:
        return
    if f.check is not None:
        problem = f.check(value)
        if problem:
            raise BundleError(f"{where}: {name} {problem}, got {_shown(value)}")
    if f.path:
        confine(root, value, name)
    if f.fields is not None:
        _check_object(value, f.fields, root, where, name + ".")
    if isinstance(value, dict) and f.path_keys:
        for key in value:
            confine(root, key, f"{name} entry {key!r}")
    if f.items is not None:
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        for k, item in pairs:
            _check_value(item, f.items, root, where, f"{name}[{k!r}]" if isinstance(k, str) else f"{name}[{k}]")


def _check_object(obj: object, schema: dict[str, Field], root: Path, where: str, prefix: str) -> None:
    if not isinstance(obj, dict):
        raise BundleError(f"{where}: {prefix.rstrip('.') or 'the manifest'} must be an object, got {_shown(obj)}")
    for key, f in schema.items():
        if key not in obj:
            if f.required:
                raise BundleError(f"{where} lacks the field {prefix + key!r}")
            continue
        _check_value(obj[key], f, root, where, prefix + key)


def confine(root: Path, rel: object, entry: str) -> Path:
    """``root / rel`` when ``rel`` is a plain relative path that resolves inside ``root``
    (symlinks followed); else a BundleError naming ``entry``. Nothing is opened."""
    def refuse(why: str) -> BundleError:
        return BundleError(f"{root}/manifest.json: {entry} {_shown(rel)} {why}; a bundle may only "
                           "name files inside its own directory")

    if not isinstance(rel, str) or not rel:
        raise refuse("is not a path")
    if "\x00" in rel or "\\" in rel:
        raise refuse("holds a NUL or backslash")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (a JSON \ud800 escape): no file has that name
        raise refuse("is not valid Unicode (it holds a lone surrogate)") from None
    if rel.startswith("/") or PureWindowsPath(rel).drive:
        raise refuse("is absolute")
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise refuse("has an empty, '.' or '..' part")
    base = Path(root).resolve()
    try:
        target = (base / rel).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise refuse(f"cannot be resolved ({e})") from e
    if not target.is_relative_to(base):
        raise refuse("leads outside the bundle (through a symlink)")
    return Path(root) / rel


def layer_names(pattern: str, num_layers: int) -> list[str]:
    return [pattern.format(i=i) for i in range(num_layers)]


def kv_mismatch(names: Collection[str], kv: dict, role: str) -> str | None:
    """What is wrong with a graph's input (``role="past"``) or output (``"present"``) names
    against the manifest's ``kv_cache``: a layer it names that the graph lacks, or a KV name
    of a layer past ``num_layers`` (``num_layers`` does not match the graph). None if they fit."""
    n = kv["num_layers"]
    names = set(names)
    for part in ("key", "value"):
        pattern = kv.get(f"{role}_{part}", DEFAULT_KV_NAMES[f"{role}_{part}"])
        missing = [x for x in layer_names(pattern, n) if x not in names]
        if missing:
            return f"lacks {missing[0]} (kv_cache.num_layers is {n}, {role}_{part} {pattern!r})"
        rx = re.compile(re.escape(pattern).replace(re.escape("{i}"), r"(\d+)"))
        layers = sorted(int(m.group(1)) for x in names if (m := rx.fullmatch(x)))
        if layers and layers[-1] >= n:
            return (f"has {pattern.format(i=layers[-1])}: the graph has {layers[-1] + 1} layers, "
                    f"kv_cache.num_layers says {n}")
    return None


# manifest.json's fields in the order the exporter writes them (``Manifest.to_json``)
FIELD_ORDER = ("format", "format_version", "created", "checkpoint_sha256", "base_model", "adapter_kind",
               "architecture", "graph_contract", "opset", "eos_token_id", "pad_token_id", "decoder_start_token_id",
               "kv_cache", "seq2seq", "generation", "tasks", "graphs", "files")


@dataclass
class Manifest:
    """manifest.json, typed (the schema above says what a good value is): the exporter builds
    one and writes :meth:`to_json`; the runtime reads one with :meth:`from_json` after
    :func:`validate_manifest`. Graph entries stay JSON objects (``GRAPH`` names their fields;
    ``runtime.bundle.GraphInfo`` is the runtime's view of one). Fields this version does not
    name are kept in ``extra``, and a manifest read and written again keeps its keys' order:
    ``to_json(from_json(m)) == m``, key for key."""

    eos_token_id: int
    pad_token_id: int
    kv_cache: dict
    graphs: list[dict] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    format: str = BUNDLE_FORMAT
    format_version: int = max(SUPPORTED_FORMAT_VERSIONS)
    created: str | None = None
    checkpoint_sha256: str | None = None
    base_model: dict | None = None
    adapter_kind: str | None = None
    graph_contract: str | None = None
    opset: int | None = None
    generation: dict | None = None
    tasks: list[str] | None = None
    architecture: str | None = None  # "encoder-decoder" (T5: two graphs a precision and task); None: "decoder"
    decoder_start_token_id: int | None = None  # encoder-decoder: the decoder's first token
    seq2seq: dict | None = None  # encoder-decoder: ``runtime.contract.Seq2SeqLayout.to_dict()``
    extra: dict = field(default_factory=dict)  # fields the table above does not name, as read
    order: tuple[str, ...] = ()  # the keys as read (empty: FIELD_ORDER, the fields that are set)

    @classmethod
    def from_json(cls, obj: dict) -> Manifest:
        known = {k: v for k, v in obj.items() if k in FIELD_ORDER}
        return cls(**known, extra={k: v for k, v in obj.items() if k not in FIELD_ORDER}, order=tuple(obj))

    def to_json(self) -> dict:
        keys = self.order or [k for k in FIELD_ORDER if getattr(self, k) is not None] + list(self.extra)
        return {k: getattr(self, k) if k in FIELD_ORDER else self.extra[k] for k in keys}

    @property
    def max_new_tokens(self) -> int:
        return (self.generation or {}).get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)

    @property
    def max_prompt_tokens(self) -> int:
        return (self.generation or {}).get("max_prompt_tokens", DEFAULT_MAX_PROMPT_TOKENS)
