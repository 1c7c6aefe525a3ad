"""``python -m services.catalog``: the searchable read model of listings and listing drafts.

``python -m services.catalog dump [DB]`` prints the read model's deterministic dump digest
(the rebuild check: two read models built from the same topic print the same).
"""

from __future__ import annotations

import sys

from services.catalog.app import CatalogSettings, build
from services.common import service


def main(argv: list[str]) -> None:
    if argv[:1] == ["dump"]:
        import json
        import sqlite3
        from pathlib import Path

        from services.catalog import store

        path = Path(argv[1]) if len(argv) > 1 else CatalogSettings().state_dir / "catalog.sqlite"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        dumped = store.dump(conn)
        print(json.dumps({"digest": store.digest(conn), "listings": len(dumped["listings"]),
                          "versions": len(dumped["versions"]), "applied_events": len(dumped["applied_events"])}))
        return
    service.main(lambda: build(CatalogSettings()))


if __name__ == "__main__":
    main(sys.argv[1:])
