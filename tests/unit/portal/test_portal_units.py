"""The portal's pure parts: language negotiation, the messages of both languages, redirects kept on
this origin, bounded session stores, the highlight re-escaping, the keys file and the ID token's claims."""

from __future__ import annotations

import json
import time

import pytest

from services.portal import i18n
from services.portal.gateway import KeysFileError, load_keys
from services.portal.oidc import SignInError, identity_of
from services.portal.sessions import PendingLogin, Session, Store, safe_next
from services.portal.views import highlighted

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("header, cookie, expected", [
    (None, None, "zh"),
    ("en-US,en;q=0.9", None, "en"),
    ("zh-CN,zh;q=0.9,en;q=0.8", None, "zh"),
    ("fr-FR, en;q=0.5, zh;q=0.7", None, "zh"),
    ("de, en;q=0", None, "zh"),           # q=0 means "not this one"
    ("en;q=abc", None, "zh"),             # a malformed q counts as 0
    ("en-US", "zh", "zh"),                # the switch wins over the browser
    ("en-US", "xx", "en"),                # an unknown cookie value is ignored
    ("," * 10_000 + "en", None, "zh"),    # a huge header is cut, not parsed whole
])
def test_language_negotiation(header, cookie, expected):
    assert i18n.negotiate(header, cookie) == expected


def test_both_languages_have_every_message():
    assert set(i18n.MESSAGES["en"]) == set(i18n.MESSAGES["zh"])
    for lang in i18n.LANGUAGES:
        assert all(text.strip() for text in i18n.MESSAGES[lang].values())


@pytest.mark.parametrize("target, expected", [
    ("/listings/a.b", "/listings/a.b"), ("/search?q=x", "/search?q=x"), (None, "/search"), ("", "/search"),
    ("//evil.example/x", "/search"), ("/\\evil.example", "/search"), ("https://evil.example", "/search"),
    ("/x\r\nSet-Cookie: a=b", "/search"), ("/" + "a" * 3000, "/search"),
])
def test_redirects_stay_on_the_portal(target, expected):
    assert safe_next(target) == expected


def test_store_is_bounded_and_expires():
    store = Store(limit=3)
    keys = [store.put(PendingLogin("s", "n", "v", "/", time.time() + 60)) for _ in range(5)]
    assert len(store) == 3 and store.get(keys[0]) is None and store.get(keys[-1]) is not None
    old = store.put(Session("sub", "n", "m", "analyst", time.time() - 1))
    assert store.get(old) is None
    assert store.get(None) is None and store.get("x" * 500) is None
    assert store.pop(keys[-1]) is not None and store.get(keys[-1]) is None


def test_csrf_token_compared_whole():
    s = Session("sub", "n", "m", "analyst", time.time() + 60)
    assert s.csrf_ok(s.csrf)
    assert not s.csrf_ok(None) and not s.csrf_ok("") and not s.csrf_ok(s.csrf[:-1])


def test_only_mark_survives_a_highlight():
    text = "&lt;b&gt;移动&lt;/b&gt; <mark>用户</mark> <script>alert(1)</script> a&amp;b"
    out = str(highlighted(text))
    assert "<mark>用户</mark>" in out
    assert "<script>" not in out and "&lt;script&gt;" in out and "a&amp;b" in out and "&lt;b&gt;" in out


def test_keys_file_must_be_private_and_well_formed(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"bank/analyst": "rdx_a.b"}))
    path.chmod(0o644)
    with pytest.raises(KeysFileError, match="0600"):
        load_keys(path)
    path.chmod(0o600)
    assert load_keys(path) == {"bank/analyst": "rdx_a.b"}
    for bad in ('{"bank/compute_operator": "k"}', '{"Bank!/analyst": "k"}', '["k"]', "not json"):
        path.write_text(bad)
        with pytest.raises(KeysFileError):
            load_keys(path)


def test_id_token_claims_map_to_member_and_role():
    who = identity_of({"sub": "u1", "rdx_member": "bank", "rdx_role": "analyst", "name": "李娜"})
    assert (who.member, who.role, who.name) == ("bank", "analyst", "李娜")
    for claims in ({"sub": "u"}, {"sub": "u", "rdx_member": "bank", "rdx_role": "compute_operator"},
                   {"sub": "u", "rdx_member": "../x", "rdx_role": "analyst"},
                   {"sub": "u", "rdx_member": ["bank"], "rdx_role": "analyst"}):
        with pytest.raises(SignInError):
            identity_of(claims)
