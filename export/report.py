"""``validation.json``: the typed report of an export's checks (torch-free: the CLI reads it).

The exporter records every check in a :class:`ValidationReport` and writes it with the facts
of the build (``build``, ``quantization``, ``seconds``, ``options``); readers (``alter-edge
export``'s summary, ``alter-edge demo scores``, the benchmarks) parse it with
:meth:`ValidationReport.from_json`. A failed check raises :class:`ExportValidationError` with
:func:`describe_failure`'s line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from alter_edge.errors import BundleError
from alter_edge.io import read_json

log = logging.getLogger(__name__)

VALIDATION = "validation.json"


class ExportValidationError(BundleError):
    """A graph failed a parity or budget check; the message names the graph, case and figure."""


@dataclass
class ValidationReport:
    atol: float
    steps: int  # greedy steps each fp32 graph must match PyTorch for ("greedy_steps")
    checks: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)  # build, quantization, seconds, options: written after the checks

    def record(self, check: dict, fatal: bool = True) -> dict:
        self.checks.append(check)
        status = "ok" if check["passed"] else "FAILED"
        log.info("%s %s [%s]: %s", check["check"], check["graph"], check.get("case", ""), status)
        if fatal and not check["passed"]:
            raise ExportValidationError(describe_failure(check))
        return check

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)

    def to_dict(self) -> dict:
        """The checks alone (without ``facts``)."""
        return {"atol": self.atol, "greedy_steps": self.steps, "passed": self.passed, "checks": self.checks}

    def to_json(self) -> dict:
        """validation.json's object: the checks, then the facts."""
        return {**self.to_dict(), **self.facts}

    @classmethod
    def from_json(cls, obj: dict) -> ValidationReport:
        rest = {k: v for k, v in obj.items() if k not in ("atol", "greedy_steps", "passed", "checks")}
        return cls(obj.get("atol", 0.0), obj.get("greedy_steps", 0), list(obj.get("checks", [])), rest)

    @classmethod
    def read(cls, bundle: Path) -> ValidationReport:
        """The report of ``bundle`` (its validation.json); a BundleError when it is not one."""
        obj = read_json(Path(bundle) / VALIDATION, BundleError, "validation.json")
        if not isinstance(obj, dict):
            raise BundleError(f"{bundle}/{VALIDATION} must be a JSON object")
        return cls.from_json(obj)

    def write(self, bundle: Path) -> None:
        from alter_edge.io import atomic_write_text

        atomic_write_text(Path(bundle) / VALIDATION, json.dumps(self.to_json(), indent=2) + "\n")

    def quantized_checks(self) -> list[dict]:
        """The ``quantized_vs_fp32`` checks (a quantized graph against its fp32 twin on the dev rows)."""
        return [c for c in self.checks if c.get("check") == "quantized_vs_fp32"]

    def dev_scores(self) -> dict[str, dict[str, float]]:
        """Per precision, per task: the dev score the export measured on the multi-task graph
        (``quantized_vs_fp32`` checks score the fp32 reference and the quantized graph on the
        whole dev split)."""
        out: dict[str, dict[str, float]] = {}
        for c in self.quantized_checks():
            if not c.get("graph", "").startswith("model."):
                continue
            for task, m in c.get("metric", {}).items():
                out.setdefault("fp32", {})[task] = m["fp32"]
                out.setdefault(c["precision"], {})[task] = m[c["precision"]]
        return out


def describe_failure(c: dict) -> str:
    what = [f"{c['check']} failed for {c['graph']}"]
    if c.get("case"):
        what.append(f"case {c['case']}")
    if "max_abs_diff" in c and c["max_abs_diff"] > c.get("atol", float("inf")):
        what.append(f"max |logits diff| {c['max_abs_diff']:.3g} > atol {c['atol']:g} "
                    "(a deep fp32 model can need a larger `atol`; see docs/export.md)")
    if c.get("tokens_equal") is False:
        what.append(f"greedy tokens differ from step {c.get('first_token_mismatch')}")
    if "top1_agreement" in c and c["top1_agreement"] < c["min_top1"]:
        low = [f"{'the mixed batch' if k == 'mixed' else 'task ' + k} {v:.3f}"
               for k, v in sorted((c.get("top1_by_case") or {}).items(), key=lambda kv: kv[1]) if v < c["min_top1"]]
        what.append(f"top-1 agreement {c['top1_agreement']:.3f} < {c['min_top1']}"
                    + (f" (below it: {', '.join(low)})" if low else ""))
    for t, d in (c.get("metric_drop_points") or {}).items():
        lo, hi = (c.get("metric_drop_interval95") or {}).get(t, (d, d))
        if d > c["budget_points"] and lo > 0:
            what.append(f"task {t} metric drops {d:.2f} points [95% interval {lo:+.2f}, {hi:+.2f}] > budget "
                        f"{c['budget_points']}")
    return "; ".join(what)
