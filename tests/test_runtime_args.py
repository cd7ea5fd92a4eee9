"""API arguments: a clear ConfigError, or the obviously right behaviour, for each odd value."""

from __future__ import annotations

import math
import os
import stat

import numpy as np
import pytest

from alter_edge.errors import ConfigError, DataError
from alter_edge.io import atomic_dir, atomic_write_text
from alter_edge.runtime import EdgeModel, SamplingParams


@pytest.mark.parametrize("kwargs, match", [
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1, got 0"),
    ({"max_new_tokens": 2.5}, "max_new_tokens must be an integer >= 1, got 2.5"),
    ({"temperature": math.nan}, r"temperature must be 0 \(greedy\) or a number in 0.001..100, got nan"),
    ({"temperature": math.inf}, "temperature must be 0 .greedy. or a number in 0.001..100, got inf"),
    ({"temperature": "0.5"}, "temperature must be 0 .greedy. or a number in 0.001..100"),
    ({"temperature": 1e-310}, "temperature must be 0 .greedy. or a number in 0.001..100, got 1e-310"),  # subnormal
    ({"temperature": 5e-324}, "temperature must be 0 .greedy. or a number in 0.001..100, got 5e-324"),
    ({"temperature": -0.5}, "temperature must be 0 .greedy. or a number in 0.001..100, got -0.5"),
    ({"top_p": math.nan}, r"top_p must be a number in \(0, 1\]"),
    # an integer too big for a float (the fuzz campaign's find): an OverflowError before
    ({"temperature": 10**400}, "temperature must be 0 .greedy. or a number in 0.001..100, got an integer of 401 digits"),
    ({"top_p": -(10**400)}, r"top_p must be a number in \(0, 1\], got an integer of 401 digits"),
    ({"max_new_tokens": -(10**5000)}, r"max_new_tokens must be an integer >= 1, got an integer of 5001 digits"),
    ({"top_k": 1.5}, "top_k must be an integer >= 0"),
    ({"seed": -1, "temperature": 0.5}, r"seed must be an integer in 0\.\.2\*\*63-1 or None, got -1"),
    ({"seed": 1.5, "temperature": 0.5}, r"seed must be an integer in 0\.\.2\*\*63-1"),
    ({"stop": [""]}, "stop strings must be non-empty strings"),
    ({"stop": 5}, "stop must be a string or a list of strings"),
])
def test_bad_sampling_arguments(edge_model, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        edge_model.generate("repeat cat dog", task="echo", **kwargs)
    with pytest.raises(ConfigError, match=match):  # stream checks before its first event
        edge_model.stream("repeat cat dog", task="echo", **kwargs)


def test_max_new_tokens_is_not_replaced_by_the_default(edge_model):
    g = edge_model.generate("repeat cat dog", task="echo", max_new_tokens=1)
    assert len(g.token_ids) <= 1
    assert SamplingParams(1).max_new_tokens == 1


def test_a_single_stop_string_is_one_stop_string(edge_model):
    assert SamplingParams(4, stop="story").stop == ("story",)
    free = edge_model.generate("repeat cat dog", task="echo", max_new_tokens=8)
    text = free.text
    assert len(text) >= 2, "the tiny model must say something for this test to mean anything"
    cut = text[1:3]
    g = edge_model.generate("repeat cat dog", task="echo", max_new_tokens=8, stop=cut)
    assert g.text == text[:text.find(cut)] and g.finish_reason == "stop"
    # a letter of the stop string alone does not stop the row
    letters = edge_model.generate("repeat cat dog", task="echo", max_new_tokens=8,
                                  stop=cut + "\x00never")
    assert letters.text == text


def test_bytes_are_not_three_generations(edge_model):
    with pytest.raises(ConfigError, match="texts must be a str or a list of str, got bytes"):
        edge_model.generate(b"abc", task="echo")
    with pytest.raises(ConfigError, match="got bytes"):
        edge_model.classify(b"abc", task="colour")
    with pytest.raises(ConfigError, match=r"texts\[1\] must be a str, got int"):
        edge_model.generate(["a", 3], task="echo")


@pytest.mark.parametrize("texts", [{"a": 1, "b": 2}, {"repeat cat dog"}, {"x": "y"}.keys()])
def test_a_mapping_or_set_is_not_a_list_of_texts(edge_model, texts):
    """A dict would run its keys, a set in no defined order: both are refused, naming the type."""
    for call in (lambda: edge_model.generate(texts, task="echo"), lambda: edge_model.stream(texts, task="echo"),
                 lambda: edge_model.classify(texts, task="colour")):
        with pytest.raises(ConfigError, match=f"texts must be a str or a list of str, got {type(texts).__name__}"):
            call()


def test_empty_list_in_empty_list_out(edge_model):
    assert edge_model.generate([], task="echo") == []
    assert edge_model.classify([], task="colour") == []
    assert list(edge_model.stream([], task="echo")) == []
    with pytest.raises(Exception, match="has no label set"):  # the task is still checked
        edge_model.classify([], task="echo")


def test_input_problems_are_data_errors(runtime_bundle, tmp_path):
    import json
    import shutil

    shutil.copytree(runtime_bundle, tmp_path / "b")
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    m["generation"]["max_prompt_tokens"] = 64  # a cut prompt + labels inside the tiny model's 256 positions
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(m))
    edge_model = EdgeModel.load(tmp_path / "b", threads=1)
    with pytest.raises(DataError, match="input is empty"):
        edge_model.generate("   ", task="echo")
    with pytest.raises(DataError, match="input is not valid Unicode"):
        edge_model.classify("\ud800", task="colour")
    long = " ".join(["cat"] * 5000)
    with pytest.raises(DataError, match="over the bundle's max_prompt_tokens"):
        edge_model.classify(long, task="colour")
    c = edge_model.classify(long, task="colour", truncate=True)
    assert c.truncated and c.label in edge_model.tasks.get("colour").labels


@pytest.mark.parametrize("kwargs, match", [
    ({"threads": 1.5}, r"threads must be an integer in 1..1024 \(or None: one per core\), got 1.5"),
    ({"threads": 0}, "threads must be an integer in 1..1024"),
    ({"threads": True}, "threads must be an integer in 1..1024"),
    ({"threads": 10**12}, "threads must be an integer in 1..1024 .*, got 1000000000000"),  # the campaign's find
    ({"precision": "int3"}, r"'int3' is not a precision; valid precisions: fp32, int8, int4"),
    ({"providers": ["NoSuchExecutionProvider"]}, "not available in this onnxruntime; available:"),
    ({"providers": [3]}, "providers must be provider names"),
])
def test_bad_load_arguments(runtime_bundle, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EdgeModel.load(runtime_bundle, **kwargs)


def test_threads_as_numpy_int_and_provider_as_a_string(runtime_bundle):
    m = EdgeModel.load(runtime_bundle, threads=np.int64(1), providers="CPUExecutionProvider")
    assert m._providers == ["CPUExecutionProvider"]


def test_json_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "bundle") as d:
            atomic_write_text(d / "manifest.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "bundle" / "manifest.json").stat().st_mode) == 0o640


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": -(10**5000)}, r"batch size must be an integer >= 1, got an integer of 5001 digits$"),
    ({"max_new_tokens": -(10**400)}, r"max_new_tokens must be an integer >= 1 or None, got an integer of 401 digits$"),
])
def test_batch_options_show_a_huge_number_short(kwargs, match):
    """A 5,001-digit integer was a ValueError from repr (Python's digit limit) inside the message."""
    from alter_edge.runtime.batch import BatchOptions

    with pytest.raises(ConfigError, match=match) as e:
        BatchOptions(**kwargs)
    assert len(str(e.value)) < 200


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": -(10**5000)}, "batch_size must be an integer >= 1 or None .*, got an integer of 5001 digits"),
    ({"stop": [10**5000]}, "stop strings must be non-empty strings, got a list too large to show"),
])
def test_a_value_too_large_to_print_is_still_one_config_error(edge_model, kwargs, match):
    """The campaign's find: repr() of an integer over Python's 4,300-digit limit raised a
    ValueError inside the error message."""
    with pytest.raises(ConfigError, match=match):
        edge_model.generate("repeat cat dog", task="echo", **kwargs)


@pytest.mark.parametrize("kwargs", [{"task": 10**5000}, {"tasks": [10**5000]}, {"task": [10**5000]}])
def test_an_unknown_task_too_large_to_print_is_one_task_error(edge_model, kwargs):
    """The campaign's find: ``unknown task {name!r}`` raised a ValueError for such a value."""
    from alter_edge.errors import TaskError

    with pytest.raises(TaskError, match="unknown task .*too large to show>?; known tasks: colour, echo, parity"):
        edge_model.generate("repeat cat dog", **kwargs)
