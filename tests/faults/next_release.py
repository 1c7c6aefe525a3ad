"""A "next release" of the consensus service for the upgrade tests: ``python -m tests.faults.next_release``.

It is rdx's consensus service unchanged but for the app version it declares (the ``app_class``
seam of ``services.consensus.__main__.build``): 2, one above this tree's. A real release would
also carry the rules that version introduces, gated on the chain's app version; this one has
none, which is what lets the test tell the two binaries apart only by the upgrade mechanism.
"""

from __future__ import annotations

from services.consensus.__main__ import ConsensusSettings, build
from services.consensus.app import APP_VERSION, RdxApp


class NextRelease(RdxApp):
    app_version = APP_VERSION + 1


if __name__ == "__main__":
    build(ConsensusSettings(), app_class=NextRelease).run()
