"""``rdx dead-letters``: list the records consumers could not apply, and replay them.

    rdx dead-letters list                                   every dead letter of the rdx topics
    rdx dead-letters list --reason handler_failed --service billing
    rdx dead-letters replay rdx.chain.events.v1:0:1234      one record, by its source coordinates
    rdx dead-letters replay --all --reason unknown_type     every match (see --dry-run first)

Both read the dead-letter topics (``<topic>.dlq``, services/common/deadletter.py) from the broker
at ``--bootstrap``, authenticated as the RDX_KAFKA_* environment says (services/common/settings.py:
KafkaSecurity; plaintext when none is set). A listing shows where each record stood, which service gave up on it and why,
never its bytes. A replay republishes the original record (key, value, headers) to its source
topic and partition, once per source record however many services dead-lettered it: consumers
that had applied it drop it as a duplicate (same event id), the others apply it once. Records
dead-lettered for what their bytes are (a tombstone, not JSON, ...) are not replayed: they would
only be dead-lettered again.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from datetime import datetime, timezone

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.common.deadletter import REPLAYABLE, REPLAYED_FROM, DeadLetter, dead_letter_topic
from services.common.events import EVENT_TOPICS
from services.common.settings import KafkaSecurity

Located = tuple[str, DeadLetter]  # (where the dead letter itself stands: "<dlq topic>:<partition>:<offset>", it)


async def read(bootstrap: str, topics: list[str], timeout_s: float = 60.0,
               security: KafkaSecurity | None = None) -> list[Located]:
    """Every dead letter of ``topics`` (source topics) up to the end of their dead-letter topics now."""
    security = security or KafkaSecurity()
    partitions = await _partitions(bootstrap, [dead_letter_topic(t) for t in topics], security)
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **security.client_options())
    await consumer.start()
    try:
        consumer.assign(partitions)
        starts, ends = await consumer.beginning_offsets(partitions), await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, starts[tp])
        found: list[Located] = []
        remaining = {tp for tp in partitions if ends[tp] > starts[tp]}
        async with asyncio.timeout(timeout_s):
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, records in batches.items():
                    for r in records:
                        if r.offset < ends[tp]:
                            try:
                                found.append((f"{tp.topic}:{tp.partition}:{r.offset}",
                                              DeadLetter.from_record(r.key, r.value, r.headers)))
                            except ValueError:
                                pass  # not written by a consumer: nothing to list or replay
                remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        return found
    finally:
        await consumer.stop()


async def _partitions(bootstrap: str, topics: list[str], security: KafkaSecurity) -> list[TopicPartition]:
    """The partitions of those of ``topics`` that exist (a dead-letter topic exists once something was
    dead-lettered, where the broker creates topics on first use)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security.client_options())
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return [TopicPartition(t["topic"], p["partition"]) for t in described if not t["error_code"]
            for p in sorted(t["partitions"], key=lambda p: p["partition"])]


def select(letters: list[Located], *, sources: list[str] = (), service: str | None = None,
           reason: str | None = None) -> list[Located]:
    return [(at, d) for at, d in letters
            if (not sources or d.source in sources) and service in (None, d.service) and reason in (None, d.reason)]


def plan(letters: list[Located]) -> tuple[list[Located], list[tuple[Located, str]]]:
    """(what to replay: one per source record, the rest skipped with why)."""
    chosen: dict[str, Located] = {}
    skipped: list[tuple[Located, str]] = []
    for located in letters:
        letter = located[1]
        if letter.reason not in REPLAYABLE:
            skipped.append((located, f"{letter.reason}: its bytes would be dead-lettered again"))
        elif not letter.carried:
            skipped.append((located, "the dead letter does not carry the value (too large); it is in the source topic"))
        elif letter.source in chosen:
            skipped.append((located, f"the same record as {chosen[letter.source][0]}"))
        else:
            chosen[letter.source] = located
    return list(chosen.values()), skipped


async def replay(bootstrap: str, letters: list[Located], security: KafkaSecurity | None = None) -> None:
    """Republish each original record to its source topic and partition; returns once acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                **(security or KafkaSecurity()).client_options())
    await producer.start()
    try:
        for at, d in letters:
            await producer.send_and_wait(d.topic, d.value, key=d.key, partition=d.partition,
                                         headers=[*d.headers, (REPLAYED_FROM, at.encode())])
    finally:
        await producer.stop()


# --------------------------------------------------------------------------------------------
# The commands

dead_letters = typer.Typer(name="dead-letters", no_args_is_help=True,
                           help="List and replay the records consumers could not apply.")

BootstrapOpt = typer.Option("127.0.0.1:9092", "--bootstrap", envvar="RDX_KAFKA_BOOTSTRAP", help="Kafka bootstrap")
TopicOpt = typer.Option(None, "--topic", help="a source topic (repeatable; default: every rdx event topic)")
ServiceOpt = typer.Option(None, "--service", help="only those this service dead-lettered")
ReasonOpt = typer.Option(None, "--reason", help="only those with this reason (tombstone, handler_failed, ...)")


def _read(bootstrap: str, topics: list[str] | None) -> list[Located]:
    try:
        return asyncio.run(read(bootstrap, topics or EVENT_TOPICS))
    except Exception as exc:  # noqa: BLE001 - KafkaError of any kind: say it and stop
        typer.secho(f"rdx dead-letters: cannot read from {bootstrap}: {type(exc).__name__}: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@dead_letters.command("list")
def list_(bootstrap: str = BootstrapOpt, topic: list[str] = TopicOpt, service: str = ServiceOpt,
          reason: str = ReasonOpt, output: str = typer.Option("text", "--output", "-o", help="text or json")) -> None:
    """Every dead letter: where the record stood, who gave up on it, why. Never its bytes."""
    letters = select(_read(bootstrap, topic), service=service, reason=reason)
    if output == "json":
        typer.echo(json.dumps([{"source": d.source, "dead_letter": at,
                                **{k: v for k, v in asdict(d).items() if k not in ("key", "value", "headers")}}
                               for at, d in letters], indent=2))
        return
    typer.echo(f"{'SOURCE':<34}{'SERVICE':<10}{'REASON':<17}{'TRIES':>5}{'BYTES':>9}  {'WHEN (UTC)':<21}DETAIL")
    for _, d in letters:
        typer.echo(f"{d.source:<34}{d.service:<10}{d.reason:<17}{d.attempts:>5}{d.size:>9}  {_when(d.at):<21}"
                   f"{d.detail[:120]}")
    typer.echo(f"{len(letters)} dead letters")


@dead_letters.command("replay")
def replay_(sources: list[str] = typer.Argument(None, help="source coordinates TOPIC:PARTITION:OFFSET, as listed"),
            all_: bool = typer.Option(False, "--all", help="every dead letter that matches the filters"),
            bootstrap: str = BootstrapOpt, topic: list[str] = TopicOpt, service: str = ServiceOpt,
            reason: str = ReasonOpt,
            dry_run: bool = typer.Option(False, "--dry-run", help="say what, send nothing")) -> None:
    """Republish dead-lettered records to their source topic (each once); consumers apply each at most once."""
    if not sources and not all_:
        raise typer.BadParameter("name the records (TOPIC:PARTITION:OFFSET) or give --all")
    letters = select(_read(bootstrap, topic), sources=sources or [], service=service, reason=reason)
    missing = sorted(set(sources or []) - {d.source for _, d in letters})
    chosen, skipped = plan(letters)
    for (at, d), why in skipped:
        typer.echo(f"skip   {d.source} ({d.service}, {at}): {why}")
    for at, d in chosen:
        typer.echo(f"{'would replay' if dry_run else 'replay'} {d.source} ({d.reason}, dead-lettered by {d.service})")
    if not dry_run and chosen:
        asyncio.run(replay(bootstrap, chosen))
    typer.echo(f"{len(chosen)} {'to replay' if dry_run else 'replayed'}, {len(skipped)} skipped")
    if missing:
        typer.secho(f"rdx dead-letters: no dead letter for {', '.join(missing)}", err=True, fg="red")
        raise typer.Exit(1)


def install(app: typer.Typer) -> None:
    """Register ``rdx dead-letters`` on the main command (rdx/cli.py)."""
    app.add_typer(dead_letters, name="dead-letters")
