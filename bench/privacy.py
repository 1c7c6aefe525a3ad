"""The utility of the privacy budget's noise: relative error of the demo's joint credit statistics
(secure aggregation over three providers, grouped by region, rdx/demo.py's data and seed) at the
default ε per job (services/common/privacy.py), with each provider's node adding its own OpenDP
Laplace noise exactly as services/compute/jobtypes/aggregation.py does (the same functions: clamp,
local aggregate, noise, result), and of HE statistics' sum and mean over one provider's column.
No services run: the noise does not depend on the protocol that carries it.

``python -m bench.privacy`` writes bench/results/privacy.json.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np

from rdx.demo import CREDIT_ROWS, REGIONS
from services.common.privacy import DEFAULT_JOB_EPSILON_MILLI
from services.compute import dp
from services.compute.jobtypes import aggregation as agg

BOUNDS = (0.0, 5_000.0)  # params.bounds the consumer would give for the demo's credit amounts
TRIALS = 300
PROVIDERS = ("telco", "logistics", "manufacturer")


def demo_credit() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """rdx/demo.py's write_data, the credit part: same seed, same draws."""
    rng = np.random.default_rng(7)
    return {m: (rng.gamma(2.0, 400.0, CREDIT_ROWS).round(2), rng.choice(REGIONS, CREDIT_ROWS)) for m in PROVIDERS}


def rel(got: float, want: float) -> float:
    return abs(got - want) / abs(want)


def aggregation_errors(data, epsilon: float) -> dict[str, dict[str, float]]:
    plan = agg.Plan({"columns": ["amount"], "group_by": "region", "groups": REGIONS})
    clamp = {"amount": BOUNDS}
    exact = sum(agg.decode(agg._prepare(plan, {"amount": a.tolist(), "region": r.tolist()}, None, clamp)[0])
                for a, r in data.values())
    truth = agg.result_of(plan, exact, len(data))["groups"]
    errors: dict[str, list[float]] = {s: [] for s in ("count", "sum", "mean", "variance")}
    for _ in range(TRIALS):
        noisy = exact + sum(agg.noise(plan, epsilon, clamp) for _ in data)  # each provider's own noise
        got = agg.result_of(plan, noisy, len(data))["groups"]
        for g in REGIONS:
            for s in errors:
                errors[s].append(rel(got[g]["amount"][s], truth[g]["amount"][s]))
    return {s: {"median": float(np.median(v)), "p95": float(np.percentile(v, 95))} for s, v in errors.items()}


def statistics_errors(data, epsilon: float) -> dict[str, dict[str, float]]:
    """HE statistics of the telco's credit amounts over every row (the count is exact there)."""
    x = np.clip(data["telco"][0], *BOUNDS)
    total = float(x.sum())
    d_sum, _ = dp.sensitivities(*BOUNDS)
    sums = [total + float(dp.laplace([0.0], d_sum, epsilon)[0]) for _ in range(TRIALS)]
    e = [rel(s, total) for s in sums]
    return {"sum": {"median": float(np.median(e)), "p95": float(np.percentile(e, 95))},
            "mean": {"median": float(np.median(e)), "p95": float(np.percentile(e, 95))}}


def main() -> None:
    data = demo_credit()
    epsilon = DEFAULT_JOB_EPSILON_MILLI / 1000
    amounts = np.concatenate([a for a, _ in data.values()])
    out = {
        "what": "relative error of DP-noised results at the default epsilon per job, demo data",
        "epsilon": epsilon, "trials": TRIALS, "bounds": list(BOUNDS),
        "clamped_fraction": float((amounts > BOUNDS[1]).mean()),
        "aggregation": {"providers": len(data), "rows_per_provider": CREDIT_ROWS, "groups": REGIONS,
                        "relative_error": aggregation_errors(data, epsilon)},
        "he_statistics": {"rows": CREDIT_ROWS, "stats": ["count", "sum", "mean"], "count": "exact",
                          "relative_error": statistics_errors(data, epsilon)},
        "python": sys.version.split()[0], "machine": platform.machine(),
    }
    path = Path(__file__).parent / "results" / "privacy.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
