"""The event types each topic's contract names (services/common/events.py EVENT_TYPES) are the types
its producers emit: consumers dead-letter any other type, so a type missing here would never be
applied.

The chain's types are read off the consensus service's source: every ``emit`` call's type, where it
is a literal, or else the event-name literals of the module that computes it (a dict of outcomes,
a helper's argument), and the one formatted type, ``Access<Status>``, from every status passed to
``AccessKeeper.close``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from services.common.events import AUDIT, CHAIN_EVENTS, EVENT_TYPES, JOB_STATUS
from services.compute import events as compute_events

CONSENSUS = Path(__file__).resolve().parents[3] / "services" / "consensus"
EVENT_NAME = re.compile(r"^[A-Z][a-z]+(?:[A-Z][a-z]+)+$")


def _emits(tree: ast.AST) -> list[ast.expr]:
    return [node.args[0] for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "emit"
            and node.args]


def _access_statuses() -> set[str]:
    statuses = set()
    for path in (CONSENSUS / "access").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "close"
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
                statuses.add(node.args[1].value)
    return statuses


def chain_event_types() -> tuple[set[str], list[str]]:
    """(the types the consensus service emits, the emit sites this test cannot read)."""
    types, unread = set(), []
    for path in sorted(CONSENSUS.rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                 and EVENT_NAME.match(n.value)}
        for arg in _emits(tree):
            if isinstance(arg, ast.Constant):
                types.add(arg.value)
            elif isinstance(arg, ast.JoinedStr) and ast.unparse(arg) == "f'Access{status.capitalize()}'":
                types |= {f"Access{s.capitalize()}" for s in _access_statuses()}
            elif isinstance(arg, (ast.Name, ast.Subscript)) and names:
                types |= names
            else:
                unread.append(f"{path.relative_to(CONSENSUS)}:{arg.lineno}: {ast.unparse(arg)}")
    return types, unread


def test_every_chain_event_type_is_in_the_contract():
    emitted, unread = chain_event_types()
    assert not unread, f"emit sites whose type this test cannot read; teach it, and add the types: {unread}"
    assert len(emitted) >= 25 and {"JobAuthorized", "AccessExpired", "AssetSuspended"} <= emitted
    assert emitted - EVENT_TYPES[CHAIN_EVENTS] == set(), "emitted by the chain but missing from EVENT_TYPES"
    assert EVENT_TYPES[CHAIN_EVENTS] - emitted == set(), "in EVENT_TYPES but never emitted by the chain"


def test_status_and_audit_types_are_in_the_contract():
    assert EVENT_TYPES[JOB_STATUS] == {compute_events.STATUS, compute_events.PROGRESS}
    gateway_audit = (Path(__file__).resolve().parents[3] / "services" / "gateway" / "audit.py").read_text()
    assert EVENT_TYPES[AUDIT] == set(re.findall(r'type="(\w+)"', gateway_audit))
