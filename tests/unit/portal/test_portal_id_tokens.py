"""ID tokens the portal must refuse: a changed signature, another audience, expired, ``alg: none``, an
HMAC made with the issuer's public key, a key the issuer does not publish, another sign-in's nonce,
another issuer. Tokens are made here with real keys (joserfc) and checked by the portal's own
verification (services/portal/oidc.py verify_id_token), as the sign-in does with the IdP's JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from services.portal.oidc import SignInError, identity_of, verify_id_token

ISSUER, CLIENT, NONCE = "http://127.0.0.1:4444/", "rdx-portal", "n-123"
SIGNER = RSAKey.generate_key(2048, parameters={"kid": "idp-1"})
PUBLISHED = KeySet.import_key_set(KeySet([SIGNER]).as_dict(private=False))  # what the JWKS endpoint serves


def claims(**changed) -> dict:
    now = int(time.time())
    return {"iss": ISSUER, "aud": CLIENT, "sub": "li.na", "nonce": NONCE, "iat": now, "exp": now + 300,
            "rdx_member": "bank", "rdx_role": "analyst", "name": "李娜", **changed}


def signed(key=SIGNER, header: dict | None = None, **changed) -> str:
    return jwt.encode(header or {"alg": "RS256", "kid": "idp-1"}, claims(**changed), key)


def b64(doc: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def check(raw: str) -> dict:
    return verify_id_token(raw, PUBLISHED, ISSUER, CLIENT, NONCE)


def test_a_good_token_signs_in():
    who = identity_of(check(signed()))
    assert (who.member, who.role, who.name) == ("bank", "analyst", "李娜")


def tampered_signature() -> str:
    head, body, sig = signed().split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[10] ^= 0x01
    return ".".join((head, body, base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()))


def changed_claims() -> str:
    """The IdP's signature over other claims: the role raised after signing."""
    head, _, sig = signed().split(".")
    return ".".join((head, b64(claims(rdx_role="association_admin", rdx_member="association")), sig))


def hmac_with_the_public_key() -> str:
    """The classic confusion: HS256 keyed with the issuer's public key, which anyone can fetch (made
    by hand: joserfc itself refuses a public key as an HMAC key)."""
    signing_input = f"{b64({'alg': 'HS256', 'kid': 'idp-1'})}.{b64(claims())}"
    mac = hmac.new(SIGNER.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


@pytest.mark.parametrize("raw", [
    pytest.param(tampered_signature(), id="changed-signature"),
    pytest.param(changed_claims(), id="changed-claims"),
    pytest.param(signed(aud="another-client"), id="another-audience"),
    pytest.param(signed(exp=int(time.time()) - 120, iat=int(time.time()) - 600), id="expired"),
    pytest.param(f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims())}.", id="alg-none"),
    pytest.param(hmac_with_the_public_key(), id="hmac-with-public-key"),
    pytest.param(signed(key=RSAKey.generate_key(2048, parameters={"kid": "idp-1"})), id="unpublished-key"),
    pytest.param(signed(nonce="another-sign-in"), id="another-nonce"),
    pytest.param(signed(iss="http://evil.example/"), id="another-issuer"),
    pytest.param(jwt.encode({"alg": "RS256", "kid": "idp-1"},
                            {k: v for k, v in claims().items() if k != "exp"}, SIGNER), id="no-expiry"),
    pytest.param("not.a.token", id="garbage"),
    pytest.param("", id="empty"),
])
def test_a_tampered_or_foreign_token_is_refused(raw):
    with pytest.raises(SignInError) as refused:
        check(raw)
    assert "eyJ" not in str(refused.value)  # the error names why, never the token
