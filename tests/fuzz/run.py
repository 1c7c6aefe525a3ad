"""Coverage-guided fuzzing of one target with atheris (libFuzzer for Python):

    python -m tests.fuzz.run TARGET [libFuzzer options] [corpus dirs]

``make fuzz`` runs every target for FUZZ_SECONDS each into tests/fuzz/corpus/<target>/ (new
inputs that reach new code are kept there, to be committed); ``make test`` runs each briefly
from that corpus (tests/unit/consensus/test_fuzz_atheris.py). A crash is written where
``-artifact_prefix`` says; copy it into tests/fuzz/crashes/<target>/, fix the bug, and the
regression test replays it from then on.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["services", "tests.fuzz"]):
    from tests.fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.run {{{','.join(TARGETS)}}} [libFuzzer options] [corpus dirs]")
    target = TARGETS[sys.argv[1]]
    target("".encode())  # build the shared chain before fuzzing, outside any input's time
    # libFuzzer re-runs argv[0] through the shell for -merge: make that this very command.
    atheris.Setup([f"{sys.executable} -m tests.fuzz.run {sys.argv[1]}", *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
