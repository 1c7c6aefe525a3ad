"""Catalog benchmark (``make bench-catalog``): 100k listings through the real ingest path, then
search latency against plain SQLite FTS5 on the same data, in the same run.

1. A real Kafka broker (KRaft, started here on free ports) and a fresh topic.
2. 100k ``AssetListed`` events (and the providers' ``MemberRegistered``), each listing built by
   the chain's own message model exactly as the consensus handler stores it, are produced to
   the topic (acks=all, the relay's producer) before the clock starts.
3. Ingest: the catalog's real consumer (``Ingest``: the idempotent consumer, one SQLite
   transaction per event, the catalog's event handler) reads the topic from offset 0 into an
   empty read model; the rate is events applied per second until it has caught up.
   Baseline: the same documents inserted into a bare FTS5 table, one transaction each.
4. Search: two-facet full-text queries (a word drawn from the corpus vocabulary, two random
   facet filters, relevance order, 20 results, with highlights and disjunctive facet counts,
   as ``GET /v1/listings`` answers), interleaved one by one with a plain FTS5 query for the
   same word on the same table (bm25 top 20, no facets): warm-up first, then p50/p99 of each.
   Bar: p99 <= 50 ms for the catalog's query; the ratio to the plain query is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import metric, percentile, write  # noqa: E402
from rdx import toolchain as tc  # noqa: E402
from rdx.components import KafkaBroker, create_topics, free_port  # noqa: E402
from services.catalog import store  # noqa: E402
from services.catalog.facets import FacetCache  # noqa: E402
from services.catalog.ingest import Ingest  # noqa: E402
from services.catalog.search import Query, search  # noqa: E402
from services.common.events import Event  # noqa: E402
from services.common.kafka import EventProducer  # noqa: E402
from services.consensus.assets.handlers import LISTING_FIELDS  # noqa: E402
from services.consensus.assets.messages import List as ListMsg  # noqa: E402

INDUSTRIES = {
    "finance": "credit loan repayment default deposit transaction merchant card overdraft mortgage collateral "
               "liquidity settlement remittance interest guarantee factoring leasing bond equity fund wallet "
               "clearing ledger chargeback",
    "telecom": "subscriber mobile roaming tenure plan churn device signal call sms broadband handset tower "
               "spectrum prepaid postpaid bandwidth latency sim porting outage coverage cell traffic voip",
    "logistics": "shipment waybill warehouse route delivery freight container port truck parcel customs "
                 "pallet dispatch courier manifest tracking carrier depot fleet pickup returns consignment "
                 "lading transit berth",
    "manufacturing": "invoice order supplier production capacity inventory component quality plant assembly "
                     "batch defect machine tooling procurement yield downtime maintenance bom sourcing "
                     "contract shift scrap throughput",
    "retail": "basket store footfall loyalty promotion sku sales refund coupon shopper checkout cart pricing "
              "markdown assortment franchise outlet catalogue voucher membership seasonal stockout receipt "
              "cashier",
    "energy": "meter consumption grid load tariff blackout solar substation peak billing kilowatt turbine "
              "battery charging emission carbon dispatching transformer feeder voltage renewable storage "
              "heating gas",
    "government": "registration licence tax permit inspection enterprise penalty filing subsidy court "
                  "procurement customs census zoning pension welfare audit tender notary patent trademark "
                  "household residency bankruptcy",
    "insurance": "policy claim premium underwriting vehicle health accident renewal agent loss actuarial "
                 "reinsurance deductible beneficiary coverage fraud surrender annuity broker hazard lapse "
                 "endorsement liability marine",
    "healthcare": "patient diagnosis prescription hospital clinic admission discharge pharmacy vaccine "
                  "referral imaging laboratory outpatient ward surgery chronic screening dosage triage "
                  "insurance bed nurse specialist",
    "transport": "passenger ticket metro bus fare ridership station timetable delay taxi ride parking toll "
                 "congestion airport flight rail ferry commute route platform boarding transfer bicycle",
    "agriculture": "crop harvest yield farm livestock fertilizer irrigation seed soil orchard poultry dairy "
                   "grain rainfall pest cooperative tractor greenhouse fishery aquaculture feed silo acreage",
    "real-estate": "property rent lease tenant mortgage valuation listing landlord occupancy parcel zoning "
                   "construction permit apartment office vacancy developer appraisal deed title broker",
}
VOCAB = {k: v.split() for k, v in INDUSTRIES.items()}
ADJECTIVES = ("monthly", "regional", "aggregated", "verified", "historical", "daily", "enterprise", "consumer",
              "anonymised", "joint", "quarterly", "cleaned", "detailed", "national", "municipal", "annual")
NOUNS = ("records", "statistics", "events", "registry", "panel", "ledger", "index", "profiles", "logs", "reports")
REGIONS = ("CN-GD", "CN-GD-SZ", "CN-GD-GZ", "CN-GD-FS", "CN-GD-DG", "CN-GD-ZH", "CN-FJ", "CN-FJ-XM", "CN-ZJ",
           "CN-ZJ-HZ", "CN-ZJ-NB", "CN-SH", "CN-JS", "CN-JS-SZ", "CN-JS-NJ", "CN-HK", "CN-MO", "CN-BJ", "CN-TJ",
           "CN-SD", "CN-SC", "CN-HB", "CN-HN", "CN-AH", "CN-JX", "CN-GX", "CN-YN", "CN-GZ", "Greater Bay Area",
           "Yangtze River Delta")
CYCLES = ("real-time", "hourly", "daily", "weekly", "monthly", "quarterly", "yearly", "irregular", "static")
LEVEL_OPS = {"L1": ("raw_download", "psi", "psi_cardinality", "aggregation"),
             "L2": ("raw_download", "psi", "psi_cardinality", "aggregation", "he_scoring"),
             "L3": ("psi", "psi_cardinality", "aggregation", "he_scoring", "supply_chain_verification"),
             "L4": ("aggregation", "he_scoring")}
FACETS_FOR_QUERIES = ("level", "region", "update_cycle", "industry", "operation", "price_model")
PROVIDERS = 500


def listing_payload(i: int, rng: random.Random) -> tuple[str, dict]:
    industry = rng.choice(list(VOCAB))
    words = rng.sample(VOCAB[industry], 8)
    level = rng.choices(("L1", "L2", "L3", "L4"), weights=(2, 3, 4, 1))[0]
    model = rng.choice(("free", "fixed", "fixed", "per_record"))
    columns = [{"name": f"{w}_{k}", "type": rng.choice(("string", "integer", "decimal", "date", "category")),
                "description": f"{rng.choice(ADJECTIVES)} {w} {words[(k + 3) % 8]}",
                "sensitivity": rng.choice(("public", "internal", "personal", "identifier", "sensitive"))}
               for k, w in enumerate(words[:5])]
    start = f"20{rng.randint(10, 23)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    metadata = {
        "title": f"{rng.choice(ADJECTIVES).capitalize()} {words[0]} and {words[1]} {rng.choice(NOUNS)}",
        "description": (f"{rng.choice(ADJECTIVES).capitalize()} {words[0]} data with {words[2]}, {words[3]} and "
                        f"{words[4]} per {rng.choice(('customer', 'enterprise', 'district', 'day', 'device'))}. "
                        f"Kept by the provider's node; {words[5]} and {words[6]} are derived monthly from "
                        f"{words[7]} sources."),
        "industry": [industry], "tags": sorted(set(rng.sample(words, 3))),
        "region": rng.choice(REGIONS), "data_start": start, "update_cycle": rng.choice(CYCLES),
        "last_updated": max(start, "2025-06-30"), "row_count": rng.randint(1_000, 100_000_000),
        "columns": columns, "licence": "rdx-member-data-1.0",
        "usage_terms": "Privacy-preserving computation only; no re-identification.",
    }
    owner = f"member-{i % PROVIDERS:03d}"
    return owner, {"id": f"{owner}.asset-{i}", "level": level,
                   "operations": sorted(rng.sample(LEVEL_OPS[level], min(len(LEVEL_OPS[level]), rng.randint(1, 3)))),
                   "commitment": f"{i:064x}", "price": {"model": model, "amount": 0 if model == "free" else
                                                        rng.choice((1, 2, 5, 50, 100, 500, 1000, 5000, 20000))},
                   "min_group_size": rng.choice((1, 5, 10, 50)), "metadata": metadata}


def chain_events(n: int, seed: int = 7):
    """What the relay would publish for n committed listings (20 per block), one by one."""
    rng = random.Random(seed)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    for m in range(PROVIDERS):
        member = f"member-{m:03d}"
        yield Event(id=f"1/{m}/0", type="MemberRegistered", entity=f"member:{member}", source="consensus",
                    occurred_at=datetime.fromtimestamp(t0, timezone.utc),
                    data={"member": member, "name": f"Member {m} Co., Ltd.", "roles": ["provider"], "node": None,
                          "height": 1})
    for i in range(n):
        owner, payload = listing_payload(i, rng)
        msg = ListMsg.model_validate(payload)
        height = 2 + i // 20
        yield Event(id=f"{height}/{i % 20}/0", type="AssetListed", entity=f"asset:{msg.id}", source="consensus",
                    occurred_at=datetime.fromtimestamp(t0 + height, timezone.utc),
                    data={"asset": msg.id, "owner": owner, "version": 1, "status": "listed",
                          "tx_hash": f"{i:064X}", **msg.model_dump(include=set(LISTING_FIELDS)), "height": height})


async def produce(bootstrap: str, topic: str, n: int) -> tuple[int, float, list[tuple[str, str, str]]]:
    """Generate and publish the events in batches (100k events do not all sit in memory); returns
    how many, the publish rate (generation excluded), and the documents for the baseline."""
    producer = EventProducer(bootstrap, "bench")
    await producer.start()
    count, publishing, docs, batch = 0, 0.0, [], []
    try:
        for ev in chain_events(n):
            batch.append(ev)
            if ev.type == "AssetListed":
                md = ev.data["metadata"]
                docs.append((md["title"], md["description"], " ".join(md["tags"])))
            if len(batch) == 2000:
                t = time.perf_counter()
                await producer.publish_many(topic, batch)
                publishing += time.perf_counter() - t
                count, batch = count + len(batch), []
        if batch:
            t = time.perf_counter()
            await producer.publish_many(topic, batch)
            publishing += time.perf_counter() - t
            count += len(batch)
    finally:
        await producer.stop()
    return count, count / publishing, docs


async def ingest(bootstrap: str, topic: str, db: Path, total: int) -> float:
    """The catalog's own consumer, from offset 0 into an empty read model, until caught up."""
    reader = Ingest(bootstrap, db, topic=topic)
    await reader.start()
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(reader.run(stop))
    applied = reader.consumer.conn
    try:
        while True:
            await asyncio.sleep(0.25)
            done = applied.execute("SELECT count(*) FROM applied_events").fetchone()[0]
            if done >= total:
                break
            if task.done():
                raise RuntimeError(f"the consumer stopped: {task.exception()!r}")
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        await task
        await reader.stop()
    return total / elapsed


def baseline_inserts(docs: list[tuple[str, str, str]], path: Path) -> float:
    """The same documents into a bare FTS5 table, one transaction per row (what the catalog's
    per-event transactions cost at the least)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE VIRTUAL TABLE plain USING fts5(title, description, tags)")
    started = time.perf_counter()
    for doc in docs:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO plain VALUES (?, ?, ?)", doc)
        conn.execute("COMMIT")
    rate = len(docs) / (time.perf_counter() - started)
    conn.close()
    return rate


def queries(n: int, seed: int = 11) -> list[Query]:
    rng = random.Random(seed)
    values = {"level": ("L1", "L2", "L3", "L4"), "region": REGIONS, "update_cycle": CYCLES,
              "industry": tuple(VOCAB), "operation": tuple(sorted({o for v in LEVEL_OPS.values() for o in v})),
              "price_model": ("free", "fixed", "per_record")}
    out = []
    for _ in range(n):
        industry = rng.choice(list(VOCAB))
        word = rng.choice(VOCAB[industry])
        chosen = rng.sample(FACETS_FOR_QUERIES, 2)
        filters = {f: (industry,) if f == "industry" else (rng.choice(values[f]),) for f in chosen}
        out.append(Query(q=word, filters=filters, limit=20))
    return out


def measure_search(db: Path, n: int, warmup: int) -> dict:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    store.tune(conn)
    plain = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    store.tune(plain)
    cache = FacetCache()
    started = time.perf_counter()
    with cache.lock:
        cache.refresh(conn)
    cache_fill = time.perf_counter() - started
    ours, base, totals, text_totals = [], [], [], []
    plain_sql = "SELECT rowid, rank FROM listings_fts WHERE listings_fts MATCH ? ORDER BY rank LIMIT 20"
    for k, query in enumerate(queries(warmup + n)):
        def run_ours():
            t = time.perf_counter()
            result = search(conn, cache, query)
            return time.perf_counter() - t, result

        def run_plain():
            t = time.perf_counter()
            plain.execute(plain_sql, (f'"{query.q}"',)).fetchall()
            return time.perf_counter() - t

        if k % 2:  # interleaved, alternating which goes first
            b = run_plain()
            o, result = run_ours()
        else:
            o, result = run_ours()
            b = run_plain()
        if k >= warmup:
            ours.append(o * 1000)
            base.append(b * 1000)
            totals.append(result["total"])
    for query in queries(200, seed=12):
        text_totals.append(plain.execute("SELECT count(*) FROM listings_fts WHERE listings_fts MATCH ?",
                                         (f'"{query.q}"',)).fetchone()[0])
    return {"ours": ours, "plain": base, "totals": totals, "text_totals": text_totals, "cache_fill_s": cache_fill}


async def main(args) -> None:
    root = Path(tempfile.mkdtemp(prefix="rdx-bench-catalog-"))
    print(f"working in {root}", flush=True)
    try:
        broker = KafkaBroker(root / "kafka", tc.installed(), port=free_port(), controller_port=free_port())
        broker.prepare()
        broker.start()
        try:
            topic = "bench.catalog.chain.events"
            create_topics(broker.bootstrap, [topic])
            print(f"generating {args.listings} listings and producing their events to Kafka ...", flush=True)
            total, produced, docs = await produce(broker.bootstrap, topic, args.listings)
            print(f"  {total} events, published at {produced:.0f} events/s; ingesting through the catalog's "
                  "consumer ...", flush=True)
            db = root / "catalog.sqlite"
            ingested = await ingest(broker.bootstrap, topic, db, total)
            print(f"  {ingested:.0f} events/s", flush=True)
        finally:
            broker.stop()
        await measure_and_write(args, root, db, total, produced, ingested, docs)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


async def measure_and_write(args, root: Path, db: Path, total: int, produced: float, ingested: float,
                            docs: list[tuple[str, str, str]]) -> None:
    plain_rate = baseline_inserts(docs, root / "plain.sqlite")
    print(f"  baseline FTS5 inserts {plain_rate:.0f} rows/s; searching ...", flush=True)
    r = measure_search(db, args.queries, args.warmup)
    p50, p99 = statistics.median(r["ours"]), percentile(r["ours"], 0.99)
    b50, b99 = statistics.median(r["plain"]), percentile(r["plain"], 0.99)
    print(f"  two-facet full-text: p50 {p50:.2f} ms, p99 {p99:.2f} ms; plain FTS5: p50 {b50:.2f} ms, "
          f"p99 {b99:.2f} ms; matches per query: text {statistics.median(r['text_totals']):.0f}, "
          f"with facets {statistics.median(r['totals']):.0f} (medians)", flush=True)
    listed = sqlite3.connect(db).execute("SELECT count(*) FROM listings WHERE status = 'listed'").fetchone()[0]
    assert listed == args.listings, listed
    metrics = [
        metric("search_two_facet_fulltext_p99_ms", p99, "ms", baseline_name="plain_fts5_bm25_top20_p99_ms",
               baseline_value=b99, bar="<= 50 ms (value)", passed=p99 <= 50.0),
        metric("search_two_facet_fulltext_p50_ms", p50, "ms", baseline_name="plain_fts5_bm25_top20_p50_ms",
               baseline_value=b50),
        metric("ingest_events_per_s", ingested, "events/s", baseline_name="plain_fts5_insert_one_tx_per_row_per_s",
               baseline_value=plain_rate),
        metric("kafka_produce_events_per_s", produced, "events/s"),
        metric("facet_cache_fill_s", r["cache_fill_s"], "s"),
    ]
    notes = (f"{args.listings} listings ({PROVIDERS} providers, {total} events) produced to a real Kafka "
             f"broker and ingested by the catalog's idempotent consumer (one SQLite transaction per event) into "
             f"an empty read model; {args.queries} two-facet full-text queries after {args.warmup} warm-up, "
             f"interleaved with the plain FTS5 query for the same word on the same table; median matches per "
             f"query: {statistics.median(r['text_totals']):.0f} for the word alone, "
             f"{statistics.median(r['totals']):.0f} with the two facets; search is measured in-process "
             f"(the service function GET /v1/listings calls, highlights and disjunctive facet counts included, "
             f"HTTP excluded); the machine is shared, other engineers' tests may run at the same time")
    path = write("catalog", metrics, notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listings", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the read model and broker data (in /tmp)")
    asyncio.run(main(parser.parse_args()))
