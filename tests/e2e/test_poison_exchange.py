"""Issue 15's report, as a developer runs it: a tombstone (and worse) on a running exchange's topics.

Before the fix, one null-valued record on rdx.chain.events.v1 took the catalog and billing down,
and `rdx up` could not bring them back (each read it again on start and died again). Here every
kind of poison goes to every rdx topic; `rdx status` must be healthy within 10 s, the records must
be listed by `rdx dead-letters list`, and a down/up cycle must come back healthy without any
consumer dead-lettering them again.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from kafkakit import poison, send_raw, send_unreadable
from portkit import free_offset

from rdx import deadletters
from services.common.events import CHAIN_EVENTS, EVENT_TOPICS, MAX_EVENT_BYTES, Event

HEALTHY_BAR_S = 10.0
# The gateway reads chain events for members' webhooks; `rdx up`'s compute node has no member, so no consumer.
CHAIN_CONSUMERS = {"catalog", "billing", "gateway"}


def rdx(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rdx", *args], capture_output=True, text=True, timeout=timeout)


def healthy_within(args: tuple[str, ...], seconds: float) -> float:
    started = time.monotonic()
    while True:
        status = rdx("status", *args)
        if status.returncode == 0:
            return time.monotonic() - started
        assert time.monotonic() - started < seconds, status.stdout + status.stderr
        time.sleep(0.2)


def listed(bootstrap: str) -> list[dict]:
    out = rdx("dead-letters", "list", "--bootstrap", bootstrap, "-o", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def send_all_poison(bootstrap: str) -> dict[str, list[int]]:
    """Every kind of poison to every rdx topic, the chain topic last; {topic: offsets}."""
    forged = Event(id="999999/0/0", type="JobAuthorized", entity="job:x", source="consensus", data={}).encode()
    sent: dict[str, list[int]] = {}
    for topic in sorted(EVENT_TOPICS, key=lambda t: t == CHAIN_EVENTS):
        offsets = [await send_raw(bootstrap, topic, value, key=key)
                   for _, _, value, key in poison(MAX_EVENT_BYTES) if value is None or len(value) < MAX_EVENT_BYTES]
        offsets.append(await send_unreadable(bootstrap, topic, forged))
        offsets.append(await send_raw(bootstrap, topic, forged))  # on the chain topic, every handler raises
        sent[topic] = offsets
    return sent


def test_poison_on_every_topic_leaves_the_exchange_healthy_across_down_and_up(toolchain, tmp_path):
    state, offset = tmp_path / "state", free_offset()
    args = ("--state-dir", str(state))
    try:
        started = rdx("up", "--detach", "--port-offset", str(offset), *args)
        assert started.returncode == 0, started.stderr + started.stdout
        bootstrap = json.loads((state / "endpoints.json").read_text())["kafka"]

        sent = asyncio.run(send_all_poison(bootstrap))
        sent_at, sent_wall = time.monotonic(), time.time()  # the last record sent
        expected = {(s, o) for s in CHAIN_CONSUMERS for o in sent[CHAIN_EVENTS]}
        while True:  # until every consumer has been through all of it
            chain = [d for _, d in asyncio.run(deadletters.read(bootstrap, [CHAIN_EVENTS]))]
            if {(d.service, d.offset) for d in chain} == expected:
                break
            assert time.monotonic() - sent_at < 60, chain
            time.sleep(0.1)
        healthy_within(args, HEALTHY_BAR_S)
        took = time.monotonic() - sent_at
        assert took < HEALTHY_BAR_S
        letters = listed(bootstrap)  # as an operator sees them
        assert {(d["service"], d["offset"]) for d in letters if d["topic"] == CHAIN_EVENTS} == expected

        assert rdx("down", *args).returncode == 0
        again = rdx("up", "--detach", "--port-offset", str(offset), *args)
        assert again.returncode == 0, again.stderr + again.stdout
        healthy_within(args, HEALTHY_BAR_S)
        time.sleep(3.0)
        assert rdx("status", *args).returncode == 0
        assert len(listed(bootstrap)) == len(letters)  # nothing was read, and dead-lettered, again
        print(f"\npoison on {len(EVENT_TOPICS)} topics ({sum(map(len, sent.values()))} records): the last one "
              f"dead-lettered {max(d.at for d in chain) - sent_wall:.2f}s after it was sent; all of them listed and "
              f"rdx status healthy after {took:.2f}s; healthy again after down/up")
    finally:
        rdx("down", *args)
