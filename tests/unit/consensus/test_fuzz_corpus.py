"""Replays the fuzzers' kept corpus and every crash ever found (tests/fuzz/) through the fuzz
targets, in-process: a regression test for whatever the coverage-guided runs discovered."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"


def _inputs(target: str) -> list[Path]:
    return sorted((FUZZ / "corpus" / target).glob("*")) + sorted((FUZZ / "crashes" / target).glob("*"))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_kept_input_passes_its_target(target):
    inputs = _inputs(target)
    assert inputs, f"no corpus for {target}: run python -m tests.fuzz.seed"
    for path in inputs:
        try:
            TARGETS[target](path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"{path.relative_to(FUZZ)}: {type(exc).__name__}: {exc}") from exc
