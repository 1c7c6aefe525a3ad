"""The results file every benchmark writes (../shared/BENCH.md): one JSON per area, ratios to a
baseline measured in the same run."""

from __future__ import annotations

import json
import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def metric(name: str, value: float, unit: str, *, baseline_name: str | None = None,
           baseline_value: float | None = None, bar: str | None = None, passed: bool | None = None,
           ratio: float | None = None) -> dict:
    if ratio is None and baseline_value:
        ratio = value / baseline_value
    return {"name": name, "value": round(value, 4), "unit": unit, "baseline_name": baseline_name,
            "baseline_value": None if baseline_value is None else round(baseline_value, 4),
            "ratio": None if ratio is None else round(ratio, 4), "bar": bar, "passed": passed}


def write(area: str, metrics: list[dict], notes: str = "", path: Path | None = None) -> Path:
    path = path or RESULTS / f"{area}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"bench": area, "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "notes": notes},
           "metrics": metrics}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)
