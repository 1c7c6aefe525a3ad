"""The catalog as DCAT-AP 3 (JSON-LD): what open-data portals and data spaces federate.

One ``dcat:Catalog`` whose ``dcat:dataset`` are the listed listings, in pages (hydra's
PartialCollectionView, as data portals page large catalogs). Mapping:

| listing | DCAT-AP |
|---|---|
| id, title, description | dct:identifier, dct:title, dct:description |
| provider (member) | dct:publisher (foaf:Agent) |
| industry | dcat:theme (EU data-theme authority, where one fits) and dcat:keyword |
| tags | dcat:keyword |
| region | dct:spatial (a dct:Location labelled with the region) |
| data_start | dct:temporal (dct:PeriodOfTime, dcat:startDate) |
| update_cycle | dct:accrualPeriodicity (EU frequency authority) |
| last_updated, first listing | dct:modified, dct:issued |
| level | dct:accessRights (EU access-right authority: L1 PUBLIC, L2 RESTRICTED, L3/L4 NON_PUBLIC) |
| licence, usage_terms | dct:license, dct:rights |
| version | dcat:version |
| operations, commitment, chain proof, columns | rdx: terms (DCAT has none for them) |

The data itself never leaves its provider, so a dataset has no downloadable distribution:
its one ``dcat:Distribution`` points (dcat:accessURL) at the listing in the exchange, where
access is requested and privacy-preserving jobs are run.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from typing import Any
from urllib.parse import quote, urlencode

EU = "http://publications.europa.eu/resource/authority/"
CONTEXT = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "vcard": "http://www.w3.org/2006/vcard/ns#",
    "hydra": "http://www.w3.org/ns/hydra/core#",
    "rdx": "https://rdx.example.org/ns/catalog#",
}
FREQUENCY = {"real-time": "UPDATE_CONT", "hourly": "HOURLY", "daily": "DAILY", "weekly": "WEEKLY",
             "monthly": "MONTHLY", "quarterly": "QUARTERLY", "yearly": "ANNUAL", "irregular": "IRREG",
             "static": "NEVER"}
ACCESS_RIGHTS = {"L1": "PUBLIC", "L2": "RESTRICTED", "L3": "NON_PUBLIC", "L4": "NON_PUBLIC"}
THEMES = {"finance": "ECON", "banking": "ECON", "insurance": "ECON", "retail": "ECON", "manufacturing": "ECON",
          "economy": "ECON", "telecom": "TECH", "technology": "TECH", "logistics": "TRAN", "transport": "TRAN",
          "energy": "ENER", "health": "HEAL", "healthcare": "HEAL", "agriculture": "AGRI", "government": "GOVE",
          "education": "EDUC", "environment": "ENVI", "science": "TECH", "justice": "JUST", "society": "SOCI",
          "real-estate": "REGI", "tourism": "SOCI"}
MAX_PAGE = 1000


def _date(value: Any) -> dict[str, str] | None:
    return {"@value": value, "@type": "xsd:date"} if isinstance(value, str) and value else None


def dataset(row: sqlite3.Row, base_url: str) -> dict[str, Any]:
    body = json.loads(row["body"])
    md = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    listing_url = f"{base_url}/v1/listings/{quote(row['id'])}"
    industry = [v for v in md.get("industry") or [] if isinstance(v, str)]
    tags = [v for v in md.get("tags") or [] if isinstance(v, str)]
    out: dict[str, Any] = {
        "@id": listing_url,
        "@type": "dcat:Dataset",
        "dct:identifier": row["id"],
        "dct:title": row["title"],
        "dct:description": md.get("description") or row["title"],
        "dct:publisher": {"@id": f"urn:rdx:member:{quote(row['owner'])}", "@type": "foaf:Agent",
                          "foaf:name": row["provider_name"] or row["owner"]},
        "dcat:keyword": sorted(set(industry + tags)),
        "dcat:theme": [{"@id": f"{EU}data-theme/{t}"} for t in sorted({THEMES[i] for i in industry if i in THEMES})],
        "dct:accessRights": {"@id": f"{EU}access-right/{ACCESS_RIGHTS.get(row['level'], 'NON_PUBLIC')}"},
        "dcat:version": str(row["version"]),
        "dct:issued": {"@value": row["issued"], "@type": "xsd:dateTime"},
        "dct:modified": _date(md.get("last_updated")) or {"@value": row["committed_at"], "@type": "xsd:dateTime"},
        "dcat:landingPage": {"@id": listing_url},
        "dcat:distribution": [{
            "@type": "dcat:Distribution",
            "dcat:accessURL": {"@id": listing_url},
            "dct:title": "Privacy-preserving use through the exchange (the data stays with its provider)",
            "rdx:operations": body.get("operations") or [],
        }],
        "rdx:level": row["level"],
        "rdx:commitment": body.get("commitment"),
        "rdx:price": body.get("price"),
        "rdx:minGroupSize": body.get("min_group_size"),
        "rdx:rowCount": md.get("row_count"),
        "rdx:columns": [{"rdx:name": c.get("name"), "rdx:type": c.get("type"), "rdx:sensitivity": c.get("sensitivity"),
                         "dct:description": c.get("description", "")}
                        for c in md.get("columns") or [] if isinstance(c, dict)],
        "rdx:proof": {"rdx:height": row["height"], "rdx:txHash": row["tx_hash"]},
    }
    if md.get("region"):
        out["dct:spatial"] = {"@type": "dct:Location", "skos:prefLabel": md["region"]}
    if _date(md.get("data_start")):
        out["dct:temporal"] = {"@type": "dct:PeriodOfTime", "dcat:startDate": _date(md["data_start"])}
    if md.get("update_cycle") in FREQUENCY:
        out["dct:accrualPeriodicity"] = {"@id": f"{EU}frequency/{FREQUENCY[md['update_cycle']]}"}
    if md.get("licence"):
        out["dct:license"] = {"@id": md["licence_url"]} if md.get("licence_url") else {
            "@type": "dct:LicenseDocument", "rdfs:label": md["licence"]}
    if md.get("usage_terms"):
        out["dct:rights"] = {"@type": "dct:RightsStatement", "rdfs:label": md["usage_terms"]}
    if md.get("contact"):
        out["dcat:contactPoint"] = {"@type": "vcard:Kind", "vcard:hasEmail": {"@id": f"mailto:{md['contact']}"}}
    return out


def export(conn: sqlite3.Connection, base_url: str, *, limit: int = 500, cursor: str | None = None,
           title: str = "Regional data exchange catalog") -> dict[str, Any]:
    """One page of the catalog (listed listings by id); ``hydra:view`` links the next page."""
    limit = max(1, min(limit, MAX_PAGE))
    after = ""
    if cursor:
        try:
            after = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        except ValueError:
            raise ValueError("cursor: not a cursor of this export") from None
    rows = conn.execute(
        "SELECT l.id, l.owner, l.level, l.title, l.version, l.height, l.tx_hash, v.body, v.committed_at, "
        "first.committed_at AS issued, m.name AS provider_name "
        "FROM listings l JOIN listing_versions v ON v.id = l.id AND v.version = l.version "
        "JOIN listing_versions first ON first.id = l.id AND first.version = "
        "(SELECT min(version) FROM listing_versions WHERE id = l.id) "
        "LEFT JOIN members m ON m.id = l.owner "
        "WHERE l.status = 'listed' AND l.id > ? ORDER BY l.id LIMIT ?", (after, limit + 1)).fetchall()
    total = conn.execute("SELECT count(*) FROM listings WHERE status = 'listed'").fetchone()[0]
    more = len(rows) > limit
    rows = rows[:limit]
    here = f"{base_url}/v1/catalog.jsonld"
    doc: dict[str, Any] = {
        "@context": CONTEXT,
        "@id": here,
        "@type": "dcat:Catalog",
        "dct:title": title,
        "dct:description": "Data listed by the association's members. The data stays with each member; it is "
                           "used only through privacy-preserving computation under grants agreed on chain.",
        "dct:publisher": {"@id": "urn:rdx:member:association", "@type": "foaf:Agent",
                          "foaf:name": "Regional Data Exchange Association"},
        "dcat:dataset": [dataset(row, base_url) for row in rows],
        "hydra:totalItems": total,
    }
    view: dict[str, Any] = {"@id": here + (f"?{urlencode({'cursor': cursor, 'limit': limit})}" if cursor else ""),
                            "@type": "hydra:PartialCollectionView", "hydra:first": {"@id": f"{here}?limit={limit}"}}
    if more:
        token = base64.urlsafe_b64encode(rows[-1]["id"].encode()).decode().rstrip("=")
        view["hydra:next"] = {"@id": f"{here}?{urlencode({'cursor': token, 'limit': limit})}"}
    doc["hydra:view"] = view
    return doc
