"""Shared fixtures: tiny random models and a tiny trained tokenizer, built in-process."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Before torch loads OpenMP: busy-waiting workers made tests/test_training.py take 70 s instead
# of 10 s on a shared, oversubscribed 2-core host (docs/results.md, docs/runtime.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from alter_edge.testing import TINY_ROWS, make_tiny_base, make_tiny_t5, make_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    make_tokenizer(d)
    return d


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny_base_dir(request, tmp_path_factory, tiny_tokenizer_dir):
    d = tmp_path_factory.mktemp(f"base-{request.param}")
    make_tiny_base(request.param, d, tiny_tokenizer_dir)
    return d


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer_dir):
    d = tmp_path_factory.mktemp("base-llama-only")
    make_tiny_base("llama", d, tiny_tokenizer_dir)
    return d


@pytest.fixture(scope="session")
def trainable_llama_dir(tmp_path_factory, tiny_tokenizer_dir):
    """Wider initial weights than HF's 0.02: top-block adapters then move the loss quickly,
    which the training tests rely on."""
    d = tmp_path_factory.mktemp("base-llama-trainable")
    make_tiny_base("llama", d, tiny_tokenizer_dir, init_range=0.2)
    return d


@pytest.fixture()
def tiny_data(tmp_path):
    from alter_edge.data import write_jsonl

    p = tmp_path / "data.jsonl"
    write_jsonl(p, TINY_ROWS)
    return p


# -- runtime: one tiny checkpoint and its bundle per test session ----------------------------
@pytest.fixture(scope="session")
def runtime_ckpt_dir(tmp_path_factory, tiny_llama_dir):
    from alter_edge.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("rt-ckpt") / "ckpt", tiny_llama_dir, kind="lora")


@pytest.fixture(scope="session")
def runtime_bundle(tmp_path_factory, runtime_ckpt_dir):
    """Multi-task model.onnx + a per-task graph for 'echo' (alter_edge.testing.build_bundle)."""
    from alter_edge.testing import build_bundle

    return build_bundle(runtime_ckpt_dir, tmp_path_factory.mktemp("rt-bundle") / "bundle",
                        task_graphs=("echo",))


@pytest.fixture(scope="session")
def merged_bundle(tmp_path_factory, runtime_ckpt_dir):
    """The same checkpoint with a merged one-task graph for 'echo' (the LoRA folded into the weights)."""
    from alter_edge.testing import build_bundle

    return build_bundle(runtime_ckpt_dir, tmp_path_factory.mktemp("merged") / "bundle", task_graphs=("echo",),
                        merged=True)


@pytest.fixture(scope="session")
def runtime_ckpt(runtime_ckpt_dir):
    """The same checkpoint in PyTorch: the reference the runtime must match."""
    from alter_edge.training.checkpoint import load_checkpoint

    return load_checkpoint(runtime_ckpt_dir)


@pytest.fixture(scope="session")
def edge_model(runtime_bundle):
    from alter_edge.runtime import EdgeModel

    return EdgeModel.load(runtime_bundle, threads=1)


@pytest.fixture(scope="module", params=["1.0", "1.1"])
def t5_dir(request, tmp_path_factory, tiny_tokenizer_dir):
    """A tiny random T5 folder, v1.0 (ReLU, tied head) and v1.1 (gated-GELU, untied), per module."""
    return make_tiny_t5(request.param, tmp_path_factory.mktemp(f"t5-{request.param}"), tiny_tokenizer_dir)

