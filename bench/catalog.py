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
   Bar: p99 <= 50 ms for the catalog's query; the ratio to the plain query is reported (issue
   23's bar: p50 <= 1.0 x). The plain query does less than the catalog's: no filters, no
   counts, no highlights, no listing rows (the notes in the results say so).
5. Chinese (issue 21): 10k more listings written in Chinese (``--chinese``; generated after the
   100k English ones with their own random stream, so the English listings, queries and their
   matches are those of earlier runs) and the same two-facet queries with a two-character
   Chinese word, interleaved with the plain FTS5 query for the same bigram phrase on the same
   table. Bar: p99 <= 50 ms. Also counted: how many listings the word finds through the bigram
   columns, and through the plain ``unicode61`` columns alone (what search found before).
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
from services.catalog.search import Query, fts_query, search  # noqa: E402
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
INDUSTRIES_ZH = {
    "finance": "信贷 贷款 还款 违约 存款 交易 商户 银行卡 透支 抵押 担保 结算 汇款 利息 保理 租赁 债券 基金 钱包 清算 账本",
    "telecom": "用户 手机 漫游 在网时长 套餐 流失 终端 信号 通话 短信 宽带 基站 频谱 预付费 带宽 时延 携号转网 覆盖 流量",
    "logistics": "运单 仓储 路线 配送 货运 集装箱 港口 卡车 包裹 海关 托盘 调度 快递 舱单 追踪 承运商 车队 揽收 退货",
    "manufacturing": "发票 订单 供应商 产能 库存 零部件 质量 工厂 装配 批次 缺陷 机床 采购 良率 停机 维护 物料 合同 产线",
    "retail": "购物篮 门店 客流 会员 促销 销售 退款 优惠券 顾客 结账 定价 降价 品类 加盟 网点 代金券 季节性 缺货 收银",
    "energy": "电表 用电量 电网 负荷 电价 停电 光伏 变电站 峰值 计费 风机 电池 充电 排放 碳排放 调度 变压器 电压 储能",
    "government": "登记 许可证 税务 审批 检查 企业 处罚 申报 补贴 法院 采购 普查 社保 养老金 审计 招标 公证 专利 商标 户籍",
    "insurance": "保单 理赔 保费 核保 车险 健康险 意外 续保 代理人 精算 再保险 免赔额 受益人 欺诈 退保 年金 经纪 责任险",
    "healthcare": "患者 诊断 处方 医院 门诊 住院 出院 药房 疫苗 转诊 影像 检验 病房 手术 慢病 筛查 剂量 分诊 护士 专科",
    "transport": "乘客 车票 地铁 公交 票价 客流量 车站 时刻表 延误 出租车 停车 收费 拥堵 机场 航班 铁路 轮渡 通勤 换乘",
    "agriculture": "作物 收成 产量 农场 牲畜 化肥 灌溉 种子 土壤 果园 家禽 奶业 粮食 降雨 病虫害 合作社 拖拉机 温室 渔业 饲料",
    "real-estate": "房产 租金 租约 租户 按揭 估值 房东 入住率 宗地 规划 施工 公寓 写字楼 空置率 开发商 评估 产权 中介",
}
VOCAB_ZH = {k: v.split() for k, v in INDUSTRIES_ZH.items()}
ADJECTIVES_ZH = ("月度", "区域", "汇总", "核验", "历史", "每日", "企业", "个人", "脱敏", "联合", "季度", "清洗后", "明细",
                 "全国", "市级", "年度")
NOUNS_ZH = ("记录", "统计", "事件", "名录", "面板", "台账", "指数", "画像", "日志", "报告")
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


def listing_payload_zh(i: int, rng: random.Random) -> tuple[str, dict]:
    """A listing written in Chinese (tags and column names stay slugs, as the chain requires)."""
    owner, payload = listing_payload(i, rng)
    md = payload["metadata"]
    industry = md["industry"][0]
    words = rng.sample(VOCAB_ZH[industry], 8)
    md["title"] = f"{rng.choice(ADJECTIVES_ZH)}{words[0]}与{words[1]}{rng.choice(NOUNS_ZH)}"
    md["description"] = (f"{rng.choice(ADJECTIVES_ZH)}{words[0]}数据，含{words[2]}、{words[3]}和{words[4]}，按"
                         f"{rng.choice(('客户', '企业', '区县', '日', '设备'))}统计。数据保存在提供方节点；{words[5]}和"
                         f"{words[6]}每月由{words[7]}来源推算。")
    for k, column in enumerate(md["columns"]):
        column["description"] = f"{rng.choice(ADJECTIVES_ZH)}{words[k]}{words[(k + 3) % 8]}"
    return owner, payload


def chain_events(n: int, seed: int = 7, chinese: int = 0):
    """What the relay would publish for n committed listings (20 per block), one by one."""
    rng = random.Random(seed)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    for m in range(PROVIDERS):
        member = f"member-{m:03d}"
        yield Event(id=f"1/{m}/0", type="MemberRegistered", entity=f"member:{member}", source="consensus",
                    occurred_at=datetime.fromtimestamp(t0, timezone.utc),
                    data={"member": member, "name": f"Member {m} Co., Ltd.", "roles": ["provider"], "node": None,
                          "height": 1})
    rng_zh = random.Random(seed + 1)  # its own stream: the English listings stay as they were
    for i in range(n + chinese):
        owner, payload = listing_payload(i, rng) if i < n else listing_payload_zh(i, rng_zh)
        msg = ListMsg.model_validate(payload)
        height = 2 + i // 20
        yield Event(id=f"{height}/{i % 20}/0", type="AssetListed", entity=f"asset:{msg.id}", source="consensus",
                    occurred_at=datetime.fromtimestamp(t0 + height, timezone.utc),
                    data={"asset": msg.id, "owner": owner, "version": 1, "status": "listed",
                          "tx_hash": f"{i:064X}", **msg.model_dump(include=set(LISTING_FIELDS)), "height": height})


async def produce(bootstrap: str, topic: str, n: int, chinese: int = 0) -> tuple[int, float, list[tuple[str, str, str]]]:
    """Generate and publish the events in batches (100k events do not all sit in memory); returns
    how many, the publish rate (generation excluded), and the documents for the baseline."""
    producer = EventProducer(bootstrap, "bench")
    await producer.start()
    count, publishing, docs, batch = 0, 0.0, [], []
    try:
        for ev in chain_events(n, chinese=chinese):
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


def queries(n: int, seed: int = 11, vocab: dict[str, list[str]] = VOCAB) -> list[Query]:
    """Two-facet queries; with ``VOCAB_ZH``, a two-character Chinese word."""
    rng = random.Random(seed)
    values = {"level": ("L1", "L2", "L3", "L4"), "region": REGIONS, "update_cycle": CYCLES,
              "industry": tuple(VOCAB), "operation": tuple(sorted({o for v in LEVEL_OPS.values() for o in v})),
              "price_model": ("free", "fixed", "per_record")}
    out = []
    for _ in range(n):
        industry = rng.choice(list(vocab))
        word = rng.choice([w for w in vocab[industry] if vocab is VOCAB or len(w) == 2])
        chosen = rng.sample(FACETS_FOR_QUERIES, 2)
        filters = {f: (industry,) if f == "industry" else (rng.choice(values[f]),) for f in chosen}
        out.append(Query(q=word, filters=filters, limit=20))
    return out


def measure_search(db: Path, n: int, warmup: int, vocab: dict[str, list[str]] = VOCAB) -> dict:
    """The catalog's query and the plain one, interleaved; the plain one is the same word as
    FTS5 text (for Chinese: the same bigram phrase over the bigram columns, search.fts_query)."""
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
    def plain_text(q: str) -> str:
        return f'"{q}"' if vocab is VOCAB else fts_query(q)

    for k, query in enumerate(queries(warmup + n, vocab=vocab)):
        def run_ours():
            t = time.perf_counter()
            result = search(conn, cache, query)
            return time.perf_counter() - t, result

        def run_plain():
            t = time.perf_counter()
            plain.execute(plain_sql, (plain_text(query.q),)).fetchall()
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
    unicode61_totals = []
    for query in queries(200, seed=12, vocab=vocab):
        text_totals.append(plain.execute("SELECT count(*) FROM listings_fts WHERE listings_fts MATCH ?",
                                         (plain_text(query.q),)).fetchone()[0])
        unicode61_totals.append(plain.execute(  # the text columns alone: what search found before bigrams
            "SELECT count(*) FROM listings_fts WHERE listings_fts MATCH ?",
            (f'{{{" ".join(store.TEXT_COLUMNS)}}} : "{query.q}"',)).fetchone()[0])
    return {"ours": ours, "plain": base, "totals": totals, "text_totals": text_totals, "cache_fill_s": cache_fill,
            "unicode61_totals": unicode61_totals}


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
            print(f"generating {args.listings} listings (+{args.chinese} in Chinese) and producing their events to "
                  "Kafka ...", flush=True)
            total, produced, docs = await produce(broker.bootstrap, topic, args.listings, args.chinese)
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
    load_before = os.getloadavg()[0]
    r = measure_search(db, args.queries, args.warmup)
    p50, p99 = statistics.median(r["ours"]), percentile(r["ours"], 0.99)
    b50, b99 = statistics.median(r["plain"]), percentile(r["plain"], 0.99)
    print(f"  two-facet full-text: p50 {p50:.2f} ms, p99 {p99:.2f} ms; plain FTS5: p50 {b50:.2f} ms, "
          f"p99 {b99:.2f} ms; matches per query: text {statistics.median(r['text_totals']):.0f}, "
          f"with facets {statistics.median(r['totals']):.0f} (medians)", flush=True)
    zh = measure_search(db, args.queries, args.warmup, vocab=VOCAB_ZH) if args.chinese else None
    if zh:
        z50, z99 = statistics.median(zh["ours"]), percentile(zh["ours"], 0.99)
        y50, y99 = statistics.median(zh["plain"]), percentile(zh["plain"], 0.99)
        print(f"  two-facet Chinese: p50 {z50:.2f} ms, p99 {z99:.2f} ms; plain FTS5 (same bigram phrase): "
              f"p50 {y50:.2f} ms, p99 {y99:.2f} ms; matches per query: bigrams {statistics.median(zh['text_totals']):.0f}, "
              f"unicode61 alone {statistics.median(zh['unicode61_totals']):.0f}, with facets "
              f"{statistics.median(zh['totals']):.0f} (medians)", flush=True)
    load_after = os.getloadavg()[0]
    listed = sqlite3.connect(db).execute("SELECT count(*) FROM listings WHERE status = 'listed'").fetchone()[0]
    assert listed == args.listings + args.chinese, listed
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
    if zh:
        metrics[2:2] = [
            metric("search_two_facet_chinese_p99_ms", z99, "ms", baseline_name="plain_fts5_bigram_phrase_top20_p99_ms",
                   baseline_value=y99, bar="<= 50 ms (value)", passed=z99 <= 50.0),
            metric("search_two_facet_chinese_p50_ms", z50, "ms", baseline_name="plain_fts5_bigram_phrase_top20_p50_ms",
                   baseline_value=y50),
            metric("chinese_two_char_word_median_matches", statistics.median(zh["text_totals"]), "listings",
                   baseline_name="unicode61_columns_alone_median_matches",
                   baseline_value=statistics.median(zh["unicode61_totals"])),
        ]
    notes = (f"{args.listings} listings ({PROVIDERS} providers, {total} events) produced to a real Kafka "
             f"broker and ingested by the catalog's idempotent consumer (one SQLite transaction per event) into "
             f"an empty read model; {args.queries} two-facet full-text queries after {args.warmup} warm-up, "
             f"interleaved with the plain FTS5 query for the same word on the same table; median matches per "
             f"query: {statistics.median(r['text_totals']):.0f} for the word alone, "
             f"{statistics.median(r['totals']):.0f} with the two facets; search is measured in-process "
             f"(the service function GET /v1/listings calls, highlights and disjunctive facet counts included, "
             f"HTTP excluded); the plain query ranks every match of the word with bm25 and returns the top 20 "
             f"rowids: it filters nothing, counts no facets, makes no highlights and reads no listing rows, which "
             f"the catalog's query does; both connections are tuned as the catalog's readers (store.tune); the "
             f"machine is shared, other engineers' tests may run at the same time (1-minute load average "
             f"{load_before:.1f} when the searches started, {load_after:.1f} when they ended)")
    if zh:
        notes += (f"; then {args.chinese} more listings written in Chinese (own random stream, after the English "
                  f"ones) and {args.queries} two-facet queries with a two-character Chinese word, interleaved with "
                  f"the plain FTS5 query for the same bigram phrase on the same table")
    path = write("catalog", metrics, notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listings", type=int, default=100_000)
    parser.add_argument("--chinese", type=int, default=10_000, help="listings written in Chinese, after the others")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the read model and broker data (in /tmp)")
    asyncio.run(main(parser.parse_args()))
