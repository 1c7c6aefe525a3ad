"""The replay check keys on the signature's bytes and its nonce, not on the header's text: every
other serialisation of one signed request that still verifies is the same request again."""

from __future__ import annotations

import base64
import re

import pytest

from services.common import httpsig
from services.common.identity import Identity
from services.gateway.auth import LocalReplayCache, replay_key
from services.gateway.limits import LocalRateLimiter
from services.gateway.problems import Problem

URL = "http://127.0.0.1:8000/v1/jobs"
BODY = b'{"tx": {}}'


@pytest.fixture(scope="module")
def signed():
    who = Identity.generate("bank")
    return who, httpsig.sign(who, "POST", URL, BODY)


def relabelled(h: dict[str, str], label: str) -> dict[str, str]:
    return {**h, "Signature-Input": re.sub(r"^sig\d*=", f"{label}=", h["Signature-Input"]),
            "Signature": re.sub(r"^sig\d*=", f"{label}=", h["Signature"])}


def other_base64(h: dict[str, str]) -> dict[str, str]:
    """The same 64 bytes in another base64 spelling: the unused low bits of the last character set."""
    value = h["Signature"].split("=:", 1)[1].rstrip(":")
    assert value.endswith("==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet[alphabet.index(value[-3]) | 0b1111]
    spelled = value[:-3] + last + "=="
    assert spelled != value and base64.b64decode(spelled) == base64.b64decode(value)
    return {**h, "Signature": h["Signature"].replace(value, spelled)}


def variants(h: dict[str, str]) -> dict[str, dict[str, str]]:
    return {
        "label renamed in both headers": relabelled(h, "other"),
        "a parameter added to the Signature member": {**h, "Signature": h["Signature"] + ";x=1"},
        "whitespace in the Signature-Input list": {**h, "Signature-Input": h["Signature-Input"].replace(" ", "  ")},
        "another base64 spelling of the bytes": other_base64(h),
    }


def test_every_reserialisation_that_verifies_gives_the_same_key(signed):
    who, h = signed
    key = replay_key(h["Signature-Input"], h["Signature"])
    for name, v in variants(h).items():
        lower = {k.lower(): val for k, val in v.items()}
        httpsig.verify(who.public_key, "POST", URL, lower, BODY, 300)  # it is accepted as a signature ...
        assert replay_key(v["Signature-Input"], v["Signature"]) == key, name  # ... and as the same one


def test_another_signature_of_the_same_request_is_a_new_key(signed):
    who, h = signed
    again = httpsig.sign(who, "POST", URL, BODY)  # a fresh nonce
    assert replay_key(again["Signature-Input"], again["Signature"]) != replay_key(h["Signature-Input"], h["Signature"])


async def test_the_cache_refuses_the_second_use_of_a_key(signed):
    _, h = signed
    cache = LocalReplayCache(300)
    assert await cache.first_use(replay_key(h["Signature-Input"], h["Signature"]))
    for v in variants(h).values():
        assert not await cache.first_use(replay_key(v["Signature-Input"], v["Signature"]))


@pytest.mark.parametrize("sig_input,signature", [
    ("", ""),
    ("sig1=(", "sig1=:AAAA:"),
    ('sig1=("@method");nonce="n"', "sig1=notbytes"),
    ('sig1=("@method");nonce=5', "sig1=:AAAA:"),          # a nonce that is not a string
    ('sig1=("@method"), sig2=("@method")', "sig1=:AAAA:"),  # two labels
    ('sig1=("@method")', "other=:AAAA:"),                   # labels that differ
    ('sig1=("@method")', "sig1=:" + "\u00e9" * 5 + ":"),
    ("\x00" * 10, "\xff" * 10),
])
def test_hostile_headers_are_a_401_not_a_crash(sig_input, signature):
    with pytest.raises(Problem) as err:
        replay_key(sig_input, signature)
    assert err.value.status == 401


async def test_local_rate_limiter_refuses_past_the_burst_and_the_quota():
    limiter = LocalRateLimiter(rate_per_s=1.0, burst=3, daily_quota=5)
    assert [await limiter.take("bank") for _ in range(3)] == [None] * 3
    wait = await limiter.take("bank")
    assert wait is not None and 0 < wait <= 1.0
    assert await limiter.take("telco") is None  # per member
    quota = LocalRateLimiter(rate_per_s=1000.0, burst=1000, daily_quota=2)
    assert [await quota.take("bank") for _ in range(2)] == [None, None]
    assert (await quota.take("bank")) > 1.0  # until the day ends
