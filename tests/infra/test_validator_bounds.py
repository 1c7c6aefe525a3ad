"""The deployed validators bound their public surfaces as a local node does: every mempool and
RPC bound of rdx/components.py is set, to the same value, as a CMT_* variable of the validator
StatefulSet (CometBFT reads CMT_<SECTION>_<KEY> over config.toml)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rdx.components import MEMPOOL_BOUNDS, RPC_BOUNDS

pytestmark = pytest.mark.unit

VALIDATORS = Path(__file__).resolve().parents[2] / "infra" / "base" / "validators.yaml"


def _cometbft_env() -> dict[str, str]:
    for doc in yaml.safe_load_all(VALIDATORS.read_text()):
        if doc and doc.get("kind") == "StatefulSet":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["name"] == "cometbft":
                    return {e["name"]: e.get("value") for e in container.get("env", [])}
    raise AssertionError("no cometbft container in the validator StatefulSet")


def _as_env(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize(("section", "bounds"), [("MEMPOOL", MEMPOOL_BOUNDS), ("RPC", RPC_BOUNDS)])
def test_every_local_bound_is_set_on_the_deployed_validator(section, bounds):
    env = _cometbft_env()
    for key, value in bounds.items():
        if "-" in key:  # not expressible as an environment variable; CometBFT's default is the same
            continue
        name = f"CMT_{section}_{key.upper()}"
        assert env.get(name) == _as_env(value), (name, env.get(name), value)
