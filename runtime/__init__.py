"""The torch-free runtime: numpy + onnxruntime + tokenizers.

Importing this package never imports torch or transformers (tests/test_runtime_torchfree.py
runs it with both blocked).
"""

from __future__ import annotations

from .bundle import Bundle, load_bundle
from .generate import SamplingParams
from .model import Classification, EdgeModel, Generation, TokenEvent, verify_bundle

__all__ = ["Bundle", "Classification", "EdgeModel", "Generation", "SamplingParams", "TokenEvent",
           "load_bundle", "verify_bundle"]
