"""``python -m services.compute``: one member's compute node.

The imports stay under the guard: the node's worker processes are spawned, and a spawned
process imports this module again (as ``__mp_main__``); it needs none of the service."""

from __future__ import annotations

if __name__ == "__main__":
    from services.common.service import main
    from services.compute.app import build
    from services.compute.settings import ComputeSettings

    main(lambda: build(ComputeSettings()))
