"""Reading a bundle directory (docs/bundle-format.md): the manifest, its checks, graph choice.

Loading checks, in order: the folder and manifest exist and parse; the manifest passes
``runtime.manifest`` (format and version, schema, path confinement, positions: the one manifest
checker); every listed file exists and the sha256 of every non-graph file matches (the error
names the file); the task registry parses and names the manifest's tasks. A graph's sha256
is checked when it is first opened (hashing every graph of a big bundle would dominate start-up),
and its logits must cover the tokenizer's vocabulary and the eos/pad ids. Any failure is a
:class:`BundleError`.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from alter_edge.errors import BundleError, ConfigError, TaskError
from alter_edge.io import read_json, sha256_file, shown
from alter_edge.tasks import TaskRegistry, task_name_problem

from .contract import (
    CONTRACT,
    DECODER_ROLE,
    ENCODER_ROLE,
    SEQ2SEQ_CONTRACT,
    KVLayout,
    Seq2SeqLayout,
)
from .manifest import (
    BUNDLE_FORMAT,
    PRECISIONS,
    REQUIRED_FILES,
    SUPPORTED_FORMAT_VERSIONS,
    Manifest,
    check_format,
    validate_manifest,
)
from .verified import HashCache

log = logging.getLogger(__name__)

# Which precision a request gets when the bundle holds several and the caller names none:
# int8 first (validated, ~4x smaller weights than fp32, accurate), then int4, then fp32.
PRECISION_PREFERENCE = ("int8", "int4", "fp32")
__all__ = ["BUNDLE_FORMAT", "PRECISIONS", "PRECISION_PREFERENCE", "SUPPORTED_FORMAT_VERSIONS", "Bundle",
           "GraphInfo", "check_vocab", "load_bundle"]


@dataclass(frozen=True)
class GraphInfo:
    path: str  # relative to the bundle
    task: str | None  # None = the multi-task graph (takes task_ids)
    precision: str
    sha256: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    ort: str | None = None  # the graph's ORT-format twin (optional; hashed in `files`)
    mode: str = "multitask"  # multitask | task (adapters folded) | merged (adapters in the weights)
    external_data: tuple[str, ...] = ()  # weight files the graph reads (listed in `files`)
    role: str | None = None  # encoder-decoder bundles: "encoder" or "decoder" (None: a decoder LM's graph)


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest
    tasks: TaskRegistry
    graphs: tuple[GraphInfo, ...]
    kv: KVLayout
    eos_id: int
    pad_id: int
    max_new_tokens: int
    max_prompt_tokens: int
    manifest_sha256: str = ""  # names this bundle's exact contents (the manifest hashes every file)
    verify: bool = True  # check each graph's sha256 when it is opened
    hash_cache: HashCache | None = field(default=None, compare=False, repr=False)  # verify="cached"
    architecture: str = "decoder"  # manifest "architecture": decoder | encoder-decoder
    seq2seq: Seq2SeqLayout | None = None  # an encoder-decoder's self and cross cache layout
    decoder_start_id: int | None = None  # an encoder-decoder's first decoder token
    _verified: set = field(default_factory=set, compare=False, repr=False)  # weight files hashed so far

    def positions(self, prompt_tokens: int, after: int) -> int:
        """The self-cache positions a request occupies: a decoder LM's prompt and the ``after``
        tokens that follow it (new tokens, or a label); an encoder-decoder's decoder positions
        only (its prompt runs in the encoder). ``kv.max_sequence_length`` bounds it."""
        return after if self.architecture == "encoder-decoder" else prompt_tokens + after

    def check_graph(self, graph: GraphInfo, ort_format: bool = False, weights: bool = True) -> Path:
        """The graph's path (its ``.ort`` twin with ``ort_format``), after its hash check
        (when ``verify``); ``weights=False`` leaves its weight files to :meth:`check_weights`."""
        if ort_format:
            if graph.ort is None:
                raise BundleError(f"{self.root}: graph {graph.path} has no .ort twin "
                                  "(its manifest lists no ORT-format twin; load without `ort_format`)")
            rel, digest = graph.ort, self.manifest.files.get(graph.ort)
            if digest is None:
                raise BundleError(f"{self.root}/manifest.json: files does not list {rel}")
        else:
            rel, digest = graph.path, graph.sha256
        if self.verify:
            _check_hash(self.root, rel, digest, self.hash_cache)
            if weights:
                self.check_weights(graph)
        return self.root / rel

    def check_weights(self, graph: GraphInfo) -> None:
        """Hash the graph's weight files not hashed yet (when ``verify``)."""
        for ext in graph.external_data:
            if self.verify and ext not in self._verified:
                _check_hash(self.root, ext, self.manifest.files[ext], self.hash_cache)
                self._verified.add(ext)

    def graph_for(self, task: str | None, precision: str | None = None) -> GraphInfo:
        """The per-task graph of ``task`` when the bundle has one, else the multi-task graph
        (``task=None`` asks for the multi-task graph). Raises when neither exists."""
        routed = self.decoding_graphs
        if task is not None:
            found = self._pick([g for g in routed if g.task == task], precision)
            if found is not None:
                return found
        found = self._pick([g for g in routed if g.task is None], precision)
        if found is None:
            have = ", ".join(f"{g.path} ({g.precision})" for g in routed)
            serving = [g for g in routed if g.task is None or g.task == task]
            if serving:  # the graphs are there, at other precisions
                there = ", ".join(sorted({g.precision for g in serving}))
                what = f"task {task!r}" if task else "the multi-task graph"
                raise BundleError(f"{self.root}: no graph at precision {precision} for {what}; its graphs "
                                  f"are at precision {there} (ask for one of those); the bundle has: {have}")
            what = f"for task {task!r} " if task else ""
            raise BundleError(
                f"{self.root}: no graph {what}at precision {precision or 'any'} and no multi-task "
                f"graph; the bundle has: {have}"
            )
        return found

    @property
    def decoding_graphs(self) -> tuple[GraphInfo, ...]:
        """The graphs a request is routed to: every graph of a decoder LM; an encoder-decoder's
        decoder graphs (each opens with its encoder graph, :meth:`encoder_for`)."""
        return tuple(g for g in self.graphs if g.role != ENCODER_ROLE)

    def encoder_for(self, graph: GraphInfo) -> GraphInfo:
        """The encoder graph paired with an encoder-decoder bundle's decoder ``graph``: the one of
        the same task and precision."""
        for g in self.graphs:
            if g.role == ENCODER_ROLE and g.task == graph.task and g.precision == graph.precision:
                return g
        raise BundleError(f"{self.root}: decoder graph {graph.path} has no encoder graph of its task "
                          f"({graph.task or 'multi-task'}) and precision {graph.precision} in manifest.json")

    @property
    def has_multi_task_graph(self) -> bool:
        return any(g.task is None for g in self.graphs)

    @staticmethod
    def _pick(graphs: list[GraphInfo], precision: str | None) -> GraphInfo | None:
        order = (precision,) if precision else PRECISION_PREFERENCE
        for p in order:
            for g in graphs:
                if g.precision == p:
                    return g
        return None


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise BundleError(f"{path.parent} is not an alter-edge bundle: {path.name} is missing")
    obj = read_json(path, BundleError, what)
    if not isinstance(obj, dict):
        raise BundleError(f"{path}: {what} must be a JSON object")
    return obj


def _check_hash(root: Path, rel: str, expected: str, cache: HashCache | None = None) -> None:
    path = root / rel
    if not path.is_file():
        raise BundleError(f"{root}: file {rel} listed in manifest.json is missing")
    if cache is not None and cache.known(path, expected):
        return
    before = path.stat()
    got = sha256_file(path)
    if cache is not None and got == expected:
        cache.remember(path, got, before)
    if got != expected:
        raise BundleError(
            f"{root}: file {rel} does not match manifest.json (sha256 {got[:12]}..., expected "
            f"{str(expected)[:12]}...): the bundle was modified or is incomplete"
        )


def _names(names: list) -> str:
    """Task names for a message: plain when they are task names, else escaped (a newline or
    U+202E in a manifest must not split or reorder the line)."""
    return ", ".join(t if task_name_problem(t) is None else shown(t, 40) for t in names) or "none"


# the bundles this runtime serves: manifest "architecture" -> the "graph_contract" it reads for it
ARCHITECTURES = {"decoder": CONTRACT, "encoder-decoder": SEQ2SEQ_CONTRACT}


def check_architecture(manifest: dict, root: Path) -> str:
    """The manifest's ``architecture`` (default: a decoder LM) when this runtime serves it with
    the manifest's ``graph_contract``; else one BundleError naming both and what is served."""
    arch = manifest.get("architecture", "decoder")
    contract = manifest.get("graph_contract", ARCHITECTURES.get(arch) if isinstance(arch, str) else None)
    if isinstance(arch, str) and arch in ARCHITECTURES and contract == ARCHITECTURES[arch]:
        return arch
    served = ", ".join(f"{a} (graph_contract {c!r})" for a, c in ARCHITECTURES.items())
    raise BundleError(f"{root}/manifest.json: architecture {shown(arch)} with graph_contract {shown(contract)} "
                      f"is not a bundle this runtime serves; it serves: {served} (re-export, or upgrade alter-edge)")


def load_bundle(root: str | Path, verify: bool | str = True) -> Bundle:
    """Read and check a bundle directory; ``verify=False`` skips the sha256 checks (faster
    start for a bundle already verified, e.g. on a read-only app partition); ``verify="cached"``
    hashes a file only when it is not the same file that matched before (``runtime.verified``)."""
    if verify not in (True, False, "cached"):
        raise ConfigError(f"verify must be True, False or 'cached', got {verify!r}")
    cache = HashCache() if verify == "cached" else None
    verify = bool(verify)
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle not found: {root} is not a directory")
    m = _read_json(root / "manifest.json", "the manifest")
    check_format(m, root)
    architecture = check_architecture(m, root)
    validate_manifest(m, root)  # schema + path confinement, before any file is opened
    m = Manifest.from_json(m)
    graphs = tuple(GraphInfo(g["path"], g.get("task"), g.get("precision", "fp32"), g["sha256"],
                             tuple(g.get("inputs", ())), tuple(g.get("outputs", ())), g.get("ort"),
                             g.get("mode", "multitask" if g.get("task") is None else "task"),
                             tuple(g.get("external_data", ())), g.get("role")) for g in m.graphs)
    _check_files(root, m.files, graphs, verify, cache)
    tasks = _load_tasks(root, m, graphs)
    bundle = Bundle(
        root=root, manifest=m, tasks=tasks, graphs=graphs, kv=KVLayout.from_dict(m.kv_cache),
        eos_id=m.eos_token_id, pad_id=m.pad_token_id,
        max_new_tokens=m.max_new_tokens, max_prompt_tokens=m.max_prompt_tokens,
        manifest_sha256=sha256_file(root / "manifest.json"), verify=verify, hash_cache=cache,
        architecture=architecture, **_seq2seq_fields(root, m, architecture, graphs),
    )
    log.info("bundle %s: %d graph(s), %d task(s)", root, len(graphs), len(tasks))
    return bundle


def _seq2seq_fields(root: Path, m: Manifest, architecture: str, graphs: tuple[GraphInfo, ...]) -> dict:
    """An encoder-decoder bundle's layout and decoder start token (checked: present, and every
    graph has a role); nothing for a decoder LM."""
    if architecture != "encoder-decoder":
        return {}
    where = f"{root}/manifest.json"
    if not isinstance(m.seq2seq, dict) or not isinstance(m.decoder_start_token_id, int) or \
            isinstance(m.decoder_start_token_id, bool):
        raise BundleError(f"{where}: an encoder-decoder bundle needs seq2seq (the cache layout) and "
                          "decoder_start_token_id (an integer)")
    roles = [g for g in graphs if g.role not in (ENCODER_ROLE, DECODER_ROLE)]
    if roles:
        raise BundleError(f"{where}: graph {roles[0].path} has role {shown(roles[0].role)}; an encoder-decoder "
                          f"bundle's graphs are each {ENCODER_ROLE!r} or {DECODER_ROLE!r}")
    try:
        layout = Seq2SeqLayout.from_dict(m.seq2seq)
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{where}: seq2seq is not a cache layout ({shown(e)})") from e
    return {"seq2seq": layout, "decoder_start_id": m.decoder_start_token_id}


def _check_files(root: Path, files: dict, graphs: tuple[GraphInfo, ...], verify: bool,
                 cache: HashCache | None = None) -> None:
    """Every listed file exists; with ``verify``, the folder holds nothing else (``_check_entries``)
    and every non-graph, non-weight file matches its sha256."""
    listed = {*files, *(g.path for g in graphs)}
    weights = {w for g in graphs for w in g.external_data}  # hashed when a graph reading them opens
    if verify:  # before any listed file is opened: a listed name may be a symlink or a FIFO
        _check_entries(root, listed | {"manifest.json"})
    for rel in sorted(listed):
        if verify and rel in files and rel not in weights:
            _check_hash(root, rel, files[rel], cache)
        elif not (root / rel).is_file() and (verify or rel in REQUIRED_FILES or rel not in files):
            raise BundleError(f"{root}: file {rel} listed in manifest.json is missing")


_KINDS = ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _entry(rel: str) -> str:
    """A folder entry's name for a message: as it is when printable UTF-8, else escaped (a
    newline, U+202E or a byte that is not UTF-8 must not split, reorder or break the line)."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return shown(rel)
    return rel if rel.isprintable() else shown(rel)


def _check_entries(root: Path, listed: set[str]) -> None:
    """Every entry under ``root``, at any depth, is a regular file the manifest lists or a folder
    on the way to one: a symlink (to a file or a folder, listed or not), FIFO, device or socket,
    an unlisted file and a folder that holds no listed file are each refused, naming the first
    (symlinks are not followed, so nothing outside the bundle is looked at)."""
    folders = {p.as_posix() for rel in listed for p in PurePosixPath(rel).parents if p.as_posix() != "."}
    unlisted: list[str] = []
    todo = [""]
    while todo:
        here = todo.pop()
        try:
            with os.scandir(root / here if here else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise BundleError(f"{root}: cannot list {here or '.'} ({e.strerror}); a bundle must be readable") from e
        for entry in entries:
            rel = f"{here}/{entry.name}" if here else entry.name
            mode = entry.stat(follow_symlinks=False).st_mode
            for test, kind in _KINDS:
                if test(mode):
                    raise BundleError(f"{root}: {_entry(rel)} is {kind}; a bundle holds only regular files and folders "
                                      "(symlinks, FIFOs, devices and sockets are refused)")
            if stat.S_ISDIR(mode):
                if rel not in folders:
                    unlisted.append(f"folder {_entry(rel)}")
                todo.append(rel)
            elif rel not in listed:
                unlisted.append(f"file {_entry(rel)}")
    if unlisted:
        unlisted.sort(key=lambda u: (u.startswith("folder"), u))  # a file first: it says more
        raise BundleError(f"{root}: {unlisted[0]} is not listed in manifest.json ({len(unlisted)} unlisted): "
                          "the bundle was modified")


def _load_tasks(root: Path, manifest: Manifest, graphs: tuple[GraphInfo, ...]) -> TaskRegistry:
    """tasks.json, which must name the tasks the manifest's graphs were exported with (in id
    order): a task id past the graphs' task table would fail inside onnxruntime."""
    try:
        tasks = TaskRegistry.load(root / "tasks.json")
    except TaskError as e:
        raise BundleError(f"{root}: {e}") from e
    exported = manifest.tasks
    if exported is not None and tasks.names != list(exported):
        raise BundleError(f"{root}: tasks.json has tasks {', '.join(tasks.names)} (ids 0..{len(tasks) - 1}) but "
                          f"the graphs were exported for {_names(exported)} "
                          "(manifest.json tasks): "
                          "the task registry does not belong to these graphs")
    for g in graphs:
        if g.task is not None and g.task not in tasks:
            raise BundleError(f"{root}: graph {g.path} is for task {g.task!r}, which tasks.json lacks")
    return tasks


def check_vocab(bundle: Bundle, tokenizer_vocab: int, graph_vocab: int | None, graph: str) -> None:
    """The tokenizer and a graph belong together: every token id the tokenizer can produce has
    a logit, and eos/pad are real ids."""
    if graph_vocab is not None and tokenizer_vocab > graph_vocab:
        raise BundleError(
            f"{bundle.root}: tokenizer.json has {tokenizer_vocab} tokens but {graph} has "
            f"{graph_vocab} logits: the tokenizer does not belong to this model"
        )
    limit = graph_vocab or tokenizer_vocab
    for name, tid in (("eos_token_id", bundle.eos_id), ("pad_token_id", bundle.pad_id)):
        if not 0 <= tid < limit:
            raise BundleError(f"{bundle.root}/manifest.json: {name} {tid} is outside the vocabulary (0..{limit - 1})")
