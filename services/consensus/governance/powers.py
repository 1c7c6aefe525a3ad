"""Which of the association's powers each transaction type exercises, and who holds them.

The association acts through two kinds of keys: its **officer** key (the association member's
own account, the key a day-to-day operator holds) and its **board** (k of n seat keys, each an
account ``<association>.board-<name>``). A power is held either by the officer alone or by the
board; the board decides which (``governance.ConfigureBoard``), except for the powers only it may
ever hold (``BOARD_ONLY``). Anything the officer may do, the board may do too, by proposal.

The defaults keep what moves money, keys, validators and rules with the board, and leave to the
officer what must be quick (admitting members, the kill switch, L4 approvals).
"""

from __future__ import annotations

OFFICER, BOARD = "officer", "board"

DEFAULT_POWERS: dict[str, str] = {
    "members": OFFICER,     # admit members (members.Register)
    "suspend": OFFICER,     # the kill switch: suspend/reinstate members, suspend assets, abort jobs
    "access": OFFICER,      # the association's own decisions on access requests (L4 approvals)
    "credits": BOARD,       # issue, withdraw and move the association's credits
    "policy": BOARD,        # publish a new classification policy
    "keys": BOARD,          # the association's own keys (its officer key, its gateway's node key)
    "recovery": BOARD,      # replace any account's key (members.Recover)
    "validators": BOARD,    # the validator set (validators.Update, validators.Rotate)
    "params": BOARD,        # chain parameters (governance.SetParams)
}
BOARD_ONLY = ("board", "upgrade")  # the board itself and app upgrades: never the officer's

BY_TYPE: dict[str, str] = {
    "members.Register": "members",
    "members.Suspend": "suspend",
    "members.Reinstate": "suspend",
    "assets.Suspend": "suspend",
    "jobs.Abort": "suspend",
    "access.Approve": "access",
    "access.Reject": "access",
    "access.Revoke": "access",
    "bank.Deposit": "credits",
    "bank.Withdraw": "credits",
    "bank.Transfer": "credits",
    "governance.PublishPolicy": "policy",
    "members.SetNode": "keys",
    "members.RotateKey": "keys",
    "members.Recover": "recovery",
    "validators.Update": "validators",
    "validators.Rotate": "validators",
    "governance.SetParams": "params",
    "governance.ConfigureBoard": "board",
    "governance.ScheduleUpgrade": "upgrade",
    "governance.CancelUpgrade": "upgrade",
}
"""A transaction of one of these types signed in the association's name exercises that power.
It is also what a board proposal may do: a proposal's action is one of these types."""


# Types that nobody but the association may sign at all (the others are also signed by members
# acting for themselves: an asset's owner suspends its asset, a consumer revokes its grant ...).
ASSOCIATION_ONLY = frozenset({
    "members.Register", "members.Suspend", "members.Reinstate", "bank.Deposit", "bank.Withdraw",
    "governance.PublishPolicy", "members.Recover", "validators.Update", "validators.Rotate",
    "governance.SetParams", "governance.ConfigureBoard", "governance.ScheduleUpgrade", "governance.CancelUpgrade",
})


def holder(powers: dict[str, str], power: str) -> str:
    return powers.get(power, BOARD) if power not in BOARD_ONLY else BOARD
