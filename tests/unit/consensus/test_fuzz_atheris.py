"""A short coverage-guided run of every fuzz target (atheris/libFuzzer) from the kept corpus.

Each target runs for RDX_FUZZ_SECONDS (default 6) in its own process; new inputs go to a
temporary folder, so the repository is not changed. ``make fuzz`` runs them for longer and
keeps what they find. A crash fails the test with the input's path and the fuzzer's report.

No RSS limit here: Linux carries a process's peak RSS across fork and exec, so a fuzzer started
from a long pytest run would read the pytest process's peak as its own (1.3 GB was seen) and
stop. ``make fuzz`` runs from make, with a 2 GiB limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[3]
SECONDS = int(os.environ.get("RDX_FUZZ_SECONDS", "6"))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_a_short_fuzzing_run_finds_no_crash(target, tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", target, f"-max_total_time={SECONDS}", "-rss_limit_mb=0",
         f"-artifact_prefix={tmp_path}/", str(new), str(ROOT / "tests" / "fuzz" / "corpus" / target)],
        cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 120)
    report = result.stderr[-3000:]
    crashes = [p.name for p in tmp_path.glob("crash-*")] + [p.name for p in tmp_path.glob("timeout-*")]
    assert result.returncode == 0 and not crashes, f"{target}: exit {result.returncode}, {crashes}\n{report}"
    runs = [line for line in result.stderr.splitlines() if line.startswith("Done ")]
    assert runs and int(runs[-1].split()[1]) > 100, report  # it really ran
