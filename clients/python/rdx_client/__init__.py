"""rdx_client: the rdx gateway for member systems (README.md of clients/python)."""

from rdx_client._core import Retry
from rdx_client.client import AsyncClient, Client
from rdx_client.errors import (ApiError, ChainRefused, Forbidden, MalformedAnswer, NotFound, RateLimited, RdxError,
                               TransportError, Unavailable, WaitTimeout)
from rdx_client.results import ResultError, open_result
from rdx_client.signing import EncodingError, Key, canonical, sign_request, sign_tx, tx_hash

__all__ = ["ApiError", "AsyncClient", "ChainRefused", "Client", "EncodingError", "Forbidden", "Key",
           "MalformedAnswer", "NotFound", "RateLimited", "RdxError", "ResultError", "Retry", "TransportError",
           "Unavailable", "WaitTimeout", "canonical", "open_result", "sign_request", "sign_tx", "tx_hash"]
