"""``rdx board`` (and the SDK under it, rdx/board.py) against a real chain: a chain of its own
whose genesis (rdx genesis, as for ``rdx up``) has a board of one local seat; the board grows to
2 of 2 by proposal, then a deposit is proposed, listed as open, and executed by the second seat's
approval."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from rdx.genesis import local_seat
from rdx.governance_cli import install
from services.common.identity import Identity

from conftest import running_chain


def _cli(chain, *args: str, key: Identity | None = None, tmp_path=None) -> tuple[int, str]:
    app = typer.Typer()
    install(app)
    extra = ["--rpc", chain.rpc_url, "--chain-id", chain.chain_id]
    if key is not None:
        path = tmp_path / f"{key.account}.json"
        key.save(path)
        extra += ["--key-file", str(path)]
    result = CliRunner().invoke(app, ["board", *args, *extra])
    return result.exit_code, result.output


def test_board_propose_approve_list_and_show_on_a_real_chain(toolchain, kafka, tmp_path):
    with running_chain(toolchain, kafka, tmp_path / "chain") as chain:
        seat, second = local_seat(chain.association), Identity.generate(f"{chain.association.account}.board-second")
        code, out = _cli(chain, "show")
        shown = json.loads(out)
        assert code == 0 and shown["board"]["threshold"] == 1 and shown["board"]["seats"] == [seat.account]

        two = {"seats": [{"name": "local", "public_key": seat.public_key},
                         {"name": "second", "public_key": second.public_key}], "threshold": 2}
        code, out = _cli(chain, "propose", "grow", "--type", "governance.ConfigureBoard", "--payload", json.dumps(two),
                         key=seat, tmp_path=tmp_path)
        assert code == 0 and json.loads(out)["status"] == "executed", out  # 1 of 1: at once

        deposit = {"to": chain.association.account, "amount": 250, "reference": "wire 7"}
        code, out = _cli(chain, "propose", "credit-7", "--type", "bank.Deposit", "--payload", json.dumps(deposit),
                         "--expires-in", "3600", key=seat, tmp_path=tmp_path)
        assert code == 0 and json.loads(out)["status"] == "open" and json.loads(out)["approvals"] == [seat.account]
        code, out = _cli(chain, "list", "--status", "open")
        assert code == 0 and out.split()[:3] == ["credit-7", "open", "bank.Deposit"] and "approvals 1/2" in out

        code, out = _cli(chain, "approve", "credit-7", key=second, tmp_path=tmp_path)
        assert code == 0 and json.loads(out)["status"] == "executed", out
        code, out = _cli(chain, "approve", "credit-7", key=seat, tmp_path=tmp_path)
        assert code == 1 and "board.Approve refused (code 14)" in out and "executed" in out
        code, out = _cli(chain, "list")
        assert [line.split()[:2] for line in out.splitlines()] == [["grow", "executed"], ["credit-7", "executed"]]
