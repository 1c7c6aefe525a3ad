"""The `rdx` member commands print what the gateway sends as data: rich markup and terminal
control sequences in a hostile answer are shown as text, never interpreted."""

from __future__ import annotations

import json

from rich.console import Console

from rdx import member_cli
from rdx_client import models as m


def rendered(monkeypatch, value, as_json=False) -> str:
    console = Console(record=True, width=200, force_terminal=True)
    monkeypatch.setattr(member_cli, "console", console)
    member_cli.show(value, as_json)
    return console.export_text()


def test_markup_and_control_sequences_in_answers_are_shown_as_text(monkeypatch):
    hostile = {"id": "[red]g1[/red]", "asset": "[link=https://evil.example]a[/link]", "consumer": "\x1b[2Jbank",
               "provider": "telco", "operations": ["psi"], "status": "pending"}
    page = m.Page[m.Grant](items=[m.Grant(**hostile)], next="[b]x")
    out = rendered(monkeypatch, (page, ["id", "asset", "consumer", "status"]))
    assert "[red]g1[/red]" in out and "[link=https://evil.example]a[/link]" in out and "\x1b[2J" not in out
    assert "\\x1b[2Jbank" in out and "more: --after [b]x" in out
    out = rendered(monkeypatch, {"[bold]key": "[blink]value"})
    assert "[bold]key" in out and "[blink]value" in out


def test_json_output_is_one_document(monkeypatch, capsys):
    page = m.Page[m.Grant](items=[m.Grant(id="g1", asset="a", consumer="b", provider="t", operations=[], status="x")])
    member_cli.show((page, ["id"]), True)
    assert json.loads(capsys.readouterr().out) == {"items": [{"id": "g1", "asset": "a", "consumer": "b", "provider": "t",
                                                              "operations": [], "status": "x"}], "next": None}
