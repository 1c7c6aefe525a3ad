from __future__ import annotations

from services.common.policy import Policy, PolicyError
from services.common.tx import Code
from services.consensus.context import Context, Rejected
from services.consensus.governance import messages as m
from services.consensus.governance.keeper import GovernanceKeeper
from services.consensus.members.keeper import MembersKeeper


def publish_policy(ctx: Context, msg: m.PublishPolicy) -> None:
    if not MembersKeeper(ctx).is_association(ctx.signer):
        raise Rejected(Code.UNAUTHORIZED, "only the association may publish the policy")
    keeper = GovernanceKeeper(ctx)
    current = keeper.policy().version
    if msg.version != current + 1:
        raise Rejected(Code.CONFLICT, f"policy version must be {current + 1}")
    try:
        Policy(msg.text, msg.version)
    except PolicyError as exc:
        raise Rejected(Code.INVALID_PAYLOAD, str(exc)) from None
    keeper.publish(msg.version, msg.text)


HANDLERS = {"governance.PublishPolicy": (m.PublishPolicy, publish_policy)}
