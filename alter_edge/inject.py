"""Injecting MTA blocks into a Hugging Face causal LM (or an encoder-decoder: T5), and the
MTAModel wrapper (torch).

Targets come from a table keyed by ``config.model_type``; nothing forks a modeling file.
The wrapper's ``forward(input_ids, attention_mask, task_ids, ...)`` is the one the trainer,
the evaluator and the ONNX exporter all call. An encoder-decoder gets MTA blocks in the FFNs of
both stacks; every block reads the same task context, so ``task_ids`` reach both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import MTAConfig
from .errors import ConfigError
from .families import FAMILIES, SEQ2SEQ_FAMILIES, Family, Seq2SeqFamily
from .mta import MTABlock, TaskContext, prior_logits


@dataclass(frozen=True)
class ArchSpec:
    layers: str  # attribute of the backbone (model.base_model) holding the block list
    mlp: str  # attribute of a block holding its MLP
    lora_targets: tuple[str, ...]  # MLP projections the projection-adapting kinds adapt
    attn: str = ""  # attribute of a block holding its attention
    attn_targets: tuple[str, ...] = ()  # attention projections (lora_attention=True)
    seq2seq: Seq2SeqFamily | None = None  # an encoder-decoder: its stacks (the fields above unused)

    @classmethod
    def of(cls, fam: Family) -> ArchSpec:
        return cls(fam.layers, fam.mlp, fam.mlp_names, fam.attn, fam.attn_names)

    @classmethod
    def of_seq2seq(cls, fam: Seq2SeqFamily) -> ArchSpec:
        return cls("", "", fam.mlp_names, "", fam.attn_names, seq2seq=fam)


# derived from the one family table (alter_edge.families): every family that trains is one the
# graph builder writes. Llama-family MLPs share gate/up/down (Gemma 3, Granite, OLMo 2 too);
# Phi-3 fuses q/k/v and gate/up; GPT-2 uses Conv1D c_attn/c_proj and c_fc/c_proj.
ARCH_TABLE: dict[str, ArchSpec] = {name: ArchSpec.of(fam) for name, fam in FAMILIES.items()}
# encoder-decoders (T5): export/seq2seq.py writes their encoder and decoder graphs
SEQ2SEQ_TABLE: dict[str, ArchSpec] = {name: ArchSpec.of_seq2seq(fam) for name, fam in SEQ2SEQ_FAMILIES.items()}


def arch_spec(model_type: str) -> ArchSpec:
    if model_type in SEQ2SEQ_TABLE:
        return SEQ2SEQ_TABLE[model_type]
    if model_type not in ARCH_TABLE:
        raise ConfigError(f"base model type {model_type!r} is not supported; supported: "
                          f"{', '.join(sorted(ARCH_TABLE))} (decoder LMs), and "
                          f"{', '.join(sorted(SEQ2SEQ_TABLE))} (encoder-decoders)")
    return ARCH_TABLE[model_type]


@dataclass(frozen=True)
class _Site:
    """Where one MTA block goes: its key in ``MTAModel.blocks``, its stack ("" for a decoder
    LM), its block index there, the block (layer) module, the FFN's path in it and the
    attention modules in it."""

    key: str
    stack: str
    index: int
    layer: nn.Module
    mlp: str
    attns: tuple[str, ...]


class _StopForward(Exception):
    pass


class _InjectHidden(nn.Module):
    """Stands in for block 0 on the cached path: ignores its input, returns the cached
    hidden states entering the first adapted block."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden_states, *args, **kwargs):
        return self.hidden


class _PassThrough(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def _gate_hook(block: MTABlock):
    def hook(module, args, kwargs):
        block.set_gate_input(args[0] if args else kwargs["hidden_states"])

    return hook


class MTAModel(nn.Module):
    """A frozen causal LM with MTA blocks in some of its layers."""

    def __init__(self, base: nn.Module, cfg: MTAConfig):
        super().__init__()
        self.base = base
        self.cfg = cfg
        self.spec = arch_spec(base.config.model_type)
        self.context = TaskContext()
        self.seq2seq = self.spec.seq2seq is not None
        # per stack, the adapted block indices; a decoder LM has one stack, ""
        self.adapted_by_stack: dict[str, list[int]] = {}
        sites: list[_Site] = []
        for stack, layers, mlp_path, attns in self._stack_paths():
            idx = cfg.resolve_layers(len(layers))
            self.adapted_by_stack[stack] = idx
            sites += [_Site(f"{stack}_{i}" if stack else str(i), stack, i, layers[i], mlp_path, attns) for i in idx]
        # a decoder LM's adapted blocks; an encoder-decoder's are per stack (adapted_by_stack)
        self.adapted_layers = [] if self.seq2seq else self.adapted_by_stack[""]
        self._sites = sites
        self.blocks = nn.ModuleDict()
        for site in sites:
            where = f"{site.stack} block {site.index}" if site.stack else f"block {site.index}"
            try:
                mlp = site.layer.get_submodule(site.mlp)
            except AttributeError:
                raise ConfigError(f"{where} of {base.config.model_type} has no {site.mlp!r}") from None
            attn = None
            if cfg.lora_attention:  # (the config checked that the kind adapts projections)
                try:
                    attn = [site.layer.get_submodule(a) for a in site.attns]
                except AttributeError:
                    raise ConfigError(f"lora_attention: {where} of {base.config.model_type} has no "
                                      f"{' / '.join(site.attns)!r}") from None
            targets = list(cfg.target_modules or [n for n in self.spec.lora_targets
                                                  if not self.seq2seq or hasattr(mlp, n)])
            block = MTABlock(mlp, cfg, targets, self.context, attn, self.spec.attn_targets)
            parent, _, name = site.mlp.rpartition(".")
            setattr(site.layer.get_submodule(parent) if parent else site.layer, name, block)
            self.blocks[site.key] = block
        if not self.blocks:
            raise ConfigError("MTA injection matched no block")
        if cfg.gate == "token":  # the gate reads the hidden state entering each adapted block
            for site in sites:
                site.layer.register_forward_pre_hook(_gate_hook(self.blocks[site.key]), with_kwargs=True)
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.base.eval()
        self._skip_layers: nn.ModuleList | None = None
        self._head_weight: torch.Tensor | None = None  # set by frozen_weights_in

    # -- structure -------------------------------------------------------------------
    def _backbone(self) -> nn.Module:
        return self.base.base_model

    def _layers(self) -> nn.ModuleList:
        if self.seq2seq:
            raise ValueError("an encoder-decoder has a block list per stack (adapted_by_stack)")
        return getattr(self._backbone(), self.spec.layers)

    def _stack_paths(self) -> list[tuple[str, nn.ModuleList, str, tuple[str, ...]]]:
        """(stack name, its block list, the FFN's path in a block, the attentions' paths)."""
        fam = self.spec.seq2seq
        if fam is None:
            return [("", self._layers(), self.spec.mlp, (self.spec.attn,))]
        return [(st.name, self.base.get_submodule(st.layers), st.mlp, st.attns) for st in fam.stacks]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The MTA parameters: ``adapters`` and ``mixture`` (what a checkpoint's adapter file holds)."""
        return {
            "adapters": [p for b in self.blocks.values() for p in b.adapter_parameters()],
            "mixture": [p for b in self.blocks.values() for p in b.mixture_parameters()],
        }

    def base_parameters(self) -> list[nn.Parameter]:
        """The base model's own weights (every parameter not in an MTA group; tied ones once)."""
        mta = {id(p) for ps in self.parameter_groups().values() for p in ps}
        return [p for p in self.base.parameters() if id(p) not in mta]

    def set_trainable(self, groups: list[str]) -> list[nn.Parameter]:
        """Freeze everything, then unfreeze the named groups (``adapters``, ``mixture``, ``base``:
        full fine-tuning); returns the trainable params."""
        for p in self.parameters():
            p.requires_grad_(False)
        out = []
        for g, params in {**self.parameter_groups(), "base": self.base_parameters()}.items():
            if g in groups:
                for p in params:
                    p.requires_grad_(True)
                    out.append(p)
        return out

    def mta_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter and mixture tensors only (what a checkpoint stores)."""
        keep = {id(p) for ps in self.parameter_groups().values() for p in ps}
        return {k: v.detach().contiguous() for k, v in self.named_parameters() if id(v) in keep}

    def load_mta_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        expected = set(self.mta_state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ValueError(
                f"adapter weights do not match this MTA config: missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}"
            )
        with torch.no_grad():
            for k, v in state.items():
                if own[k].shape != v.shape:
                    raise ValueError(f"adapter weight {k}: shape {tuple(v.shape)} != {tuple(own[k].shape)}")
                own[k].copy_(v)

    def reset_mixture(self) -> None:
        """Every block's mixture back to its prior, and the token gate (if any) back to zero:
        the mixture a two-stage run's stage 1 trains with."""
        prior = prior_logits(self.cfg)
        with torch.no_grad():
            for b in self.blocks.values():
                b.mixture.logits.copy_(prior)
                if b.gate_weight is not None:
                    b.gate_weight.zero_()

    # -- forward ---------------------------------------------------------------------
    @contextmanager
    def tasks(self, task_ids: torch.Tensor) -> Iterator[None]:
        """``task_ids``: int64 ``[batch]``, one task a row; or ``[batch, seq]``, one task a token
        (training's packed rows, where one row of the tensor holds several examples)."""
        if task_ids.dtype != torch.long or task_ids.dim() not in (1, 2):
            raise ValueError("task_ids must be int64 of shape [batch] (or [batch, seq] for packed rows), "
                             f"got {task_ids.dtype} {tuple(task_ids.shape)}")
        self.context.task_ids = task_ids
        try:
            yield
        finally:
            self.context.task_ids = None
            for b in self.blocks.values():
                b.set_gate_input(None)

    def forward(self, input_ids, attention_mask=None, task_ids=None, **kwargs):
        """The base model's forward with task ids: returns the base model's output."""
        with self.tasks(task_ids):
            return self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def logits_at(self, input_ids, attention_mask, task_ids, positions, prefix_hidden=None, position_ids=None):
        """Logits only at ``positions`` (a (batch_idx, pos_idx) pair of index tensors): (N, V).

        With ``prefix_hidden`` (the cached input of the first adapted block), blocks below it
        are skipped; the result equals the full forward's. Packed rows pass ``position_ids``
        that restart at 0 for every example and no ``attention_mask``: the attention mask is
        then block-diagonal (transformers' packed-sequence masks)."""
        backbone = self._backbone()
        with self.tasks(task_ids), self._prefix(prefix_hidden):
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=False).last_hidden_state
        return self._head(hidden[positions])  # (N, V)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        head = self.base.get_output_embeddings()
        if self._head_weight is not None and torch.is_autocast_enabled("cpu"):
            return F.linear(h, self._head_weight, head.bias)  # the head's low-precision copy
        return head(h)

    def decoder_start_id(self) -> int:
        """An encoder-decoder's first decoder token (T5: the pad token)."""
        start = getattr(self.base.config, "decoder_start_token_id", None)
        if start is None:
            raise ConfigError(f"{self.base.config.model_type}: the config has no decoder_start_token_id")
        return int(start)

    def seq2seq_logits_at(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, task_ids,
                          positions):
        """An encoder-decoder's logits only at decoder ``positions`` (a (batch_idx, pos_idx) pair):
        (N, V). The prompt goes to the encoder, ``decoder_input_ids`` (the decoder start token,
        then the target shifted right) to the decoder; ``task_ids`` ([batch]) reach the blocks of
        both stacks."""
        if not self.seq2seq:
            raise ValueError("seq2seq_logits_at: not an encoder-decoder (use logits_at)")
        with self.tasks(task_ids):
            enc = self.base.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            hidden = self.base.get_decoder()(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
                                             encoder_hidden_states=enc, encoder_attention_mask=attention_mask,
                                             use_cache=False).last_hidden_state
        h = hidden[positions]  # (N, H)
        cfg = self.base.config
        if getattr(cfg, "scale_decoder_outputs", getattr(cfg, "tie_word_embeddings", True)):
            h = h * (cfg.d_model ** -0.5)  # T5 with a tied head scales before it (as its forward does)
        return self._head(h)

    @contextmanager
    def frozen_weights_in(self, dtype: torch.dtype, layers: Sequence[int] | None = None) -> Iterator[None]:
        """Inside, the base model's projection weights in ``layers`` (default: the adapted
        blocks) are ``dtype`` tensors and the output head has a ``dtype`` copy (the embedding it
        may be tied to is untouched); the float32 originals are back on exit, and adapter weights
        are never touched. Under autocast to ``dtype`` that is the same arithmetic without
        casting every weight again at every call (autocast does not cache a frozen weight's
        cast). float32: nothing changes. Contexts nest (the prefix cache's inside training's)."""
        if dtype == torch.float32:
            yield
            return
        mta = {id(p) for ps in self.parameter_groups().values() for p in ps}
        modules = [s.layer for s in self._sites] if layers is None else [self._layers()[i] for i in layers]
        frozen = [m for layer in modules for m in layer.modules()
                  if isinstance(m, nn.Linear) and id(m.weight) not in mta and m.weight.dtype != dtype]
        originals = [m.weight for m in frozen]
        head = self._head_weight
        try:
            for m in frozen:
                m.weight = nn.Parameter(m.weight.detach().to(dtype), requires_grad=False)
            if head is None or head.dtype != dtype:
                self._head_weight = self.base.get_output_embeddings().weight.detach().to(dtype)
            yield
        finally:
            for m, w in zip(frozen, originals, strict=True):
                m.weight = w
            self._head_weight = head

    @contextmanager
    def _prefix(self, prefix_hidden: torch.Tensor | None) -> Iterator[None]:
        if prefix_hidden is None:
            yield
            return
        layers = self._layers()
        first = self.adapted_layers[0]
        if first == 0:
            raise ValueError("no frozen prefix: block 0 is adapted")
        if self._skip_layers is None:
            skip = [_InjectHidden()] + [_PassThrough() for _ in range(first - 1)]
            self._skip_layers = nn.ModuleList(skip + list(layers[first:]))
        self._skip_layers[0].hidden = prefix_hidden
        setattr(self._backbone(), self.spec.layers, self._skip_layers)
        try:
            yield
        finally:
            self._skip_layers[0].hidden = None
            setattr(self._backbone(), self.spec.layers, layers)

    @torch.no_grad()
    def prefix_hidden(self, input_ids, attention_mask) -> torch.Tensor:
        """Hidden states entering the first adapted block (B, T, H); stops the forward there."""
        first = self.adapted_layers[0]
        captured: dict[str, torch.Tensor] = {}

        def hook(module, args, kwargs):
            captured["h"] = args[0] if args else kwargs["hidden_states"]
            raise _StopForward

        handle = self._layers()[first].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            self._backbone()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured["h"]


def count_parameters(model: MTAModel) -> dict[str, int]:
    groups = model.parameter_groups()
    mta = {id(p) for ps in groups.values() for p in ps}
    base = sum(p.numel() for p in model.parameters() if id(p) not in mta)
    return {
        "base": base,
        "adapters": sum(p.numel() for p in groups["adapters"]),
        "mixture": sum(p.numel() for p in groups["mixture"]),
    }
