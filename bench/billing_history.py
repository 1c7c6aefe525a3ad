"""`make bench-billing-history`: today's settlement-to-transfer ratio against an earlier commit's, in
the same run on the same machine.

A ratio of rates moves from machine to machine and day to day (the same code gave 0.27 one day
and 0.18-0.26 on another machine), so a bar stated as "no lower than it was" is only checked
against the earlier code measured now. This runs this tree's bench/billing.py, alternately, on a
git worktree of ``--then`` (default: the commit before issue 16's first, whose settlement is the
3-tx form without a release, ``--no-release``) and on this tree (its own settlement), ``--pairs``
times, and reports both ratios' medians (rate and per CPU) and today's over then's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import median, metric, write

ROOT = Path(__file__).resolve().parent.parent
THEN = "d531290^"  # "Fair exchange, first part (issue 16)": the commit before it


def run(tree: Path, module: str, form: list[str], out: Path) -> tuple[float, float]:
    """One run of the bench ``module`` in ``tree`` (its code): (rate ratio, per-CPU ratio)."""
    subprocess.run([sys.executable, "-m", module, *form, "--out", str(out)], cwd=tree, check=True,
                   stdout=subprocess.DEVNULL)
    metrics = {m["name"]: m for m in json.loads(out.read_text())["metrics"]}
    return metrics["settlements_per_s"]["ratio"], metrics["settlements_per_cpu_s"]["ratio"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--then", default=THEN, help="the earlier commit (git revision)")
    parser.add_argument("--then-form", default="--no-release", help="bench/billing.py's form for that code")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    then_commit = subprocess.run(["git", "rev-parse", "--short", args.then], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="rdx-bench-history.") as tmp:
        old = Path(tmp) / "then"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), then_commit], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            # The earlier code runs today's bench too (same load, same measurement), beside its own.
            shutil.copy(ROOT / "bench" / "billing.py", old / "bench" / "billing_now.py")
            # And today's CometBFT build: its cache key is the patches' digest, and a patch added
            # since (rdx/patches) made the earlier tree ask for a build nobody makes. Both sides on
            # one node binary compare rdx's own code, which is what the ratio is about.
            shutil.rmtree(old / "rdx" / "patches")
            shutil.copytree(ROOT / "rdx" / "patches", old / "rdx" / "patches")
            ratios: dict[str, list[tuple[float, float]]] = {"then": [], "now": []}
            for i in range(args.pairs):
                ratios["then"].append(run(old, "bench.billing_now", [args.then_form], Path(tmp) / f"then-{i}.json"))
                ratios["now"].append(run(ROOT, "bench.billing", [], Path(tmp) / f"now-{i}.json"))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    rate = {k: median([r for r, _ in v]) for k, v in ratios.items()}
    cpu = {k: median([c for _, c in v]) for k, v in ratios.items()}
    metrics = [
        metric("settlement_rate_ratio_now", rate["now"], "ratio", baseline_name=f"settlement_rate_ratio_at_{then_commit}",
               baseline_value=rate["then"], bar=">= 1.0 (issue 16: the ratio does not fall below the earlier code's)",
               passed=rate["now"] >= rate["then"]),
        metric("settlement_cpu_ratio_now", cpu["now"], "ratio", baseline_name=f"settlement_cpu_ratio_at_{then_commit}",
               baseline_value=cpu["then"], bar="report (what the rate ratio tends to when the CPU is the bound)"),
    ]
    notes = (f"bench/billing.py of this tree, run alternately on {then_commit} ({args.then_form}) and on this tree, "
             f"{args.pairs} pairs; (rate ratio, per-CPU ratio) per run: then {ratios['then']}, now {ratios['now']}")
    path = write("billing_history", metrics, notes, args.out)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
