"""Shared fixtures: tiny random models and a tiny trained tokenizer, built in-process."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests.helpers import TINY_ROWS, make_tiny_base, make_tokenizer  # noqa: E402


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


@pytest.fixture()
def tiny_data(tmp_path):
    from alter_edge.data import write_jsonl

    p = tmp_path / "data.jsonl"
    write_jsonl(p, TINY_ROWS)
    return p
