"""A "next release" of the consensus service for the upgrade tests: ``python -m tests.faults.next_release``.

It is rdx's consensus service unchanged but for the app version it declares (the ``app_class``
seam of ``services.consensus.__main__.build``): 2, one above this tree's. The rules this tree
already gates on app version 2 (the state tree, ZIP-215 tx signatures) change nothing on a chain
from ``rdx genesis``, which has both from its genesis, so the test tells the two binaries apart
only by the upgrade mechanism.
"""

from __future__ import annotations

from services.consensus.__main__ import ConsensusSettings, build
from services.consensus.app import APP_VERSION, RdxApp


class NextRelease(RdxApp):
    app_version = APP_VERSION + 1


if __name__ == "__main__":
    build(ConsensusSettings(), app_class=NextRelease).run()
