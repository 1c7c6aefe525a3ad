"""The privacy budget contract, shared by the chain (which spends it) and the compute nodes (which
add the noise the spend pays for).

A listing may declare ``privacy_budget``: ``epsilon_milli`` (ε × 1000, an integer: a tx holds no
floats) that one consumer may spend on that listing per ``period_s`` seconds of block time. A job
whose results carry differential-privacy noise (``aggregation``, and ``he_scoring`` in its
``statistics`` mode) spends ``params.epsilon_milli`` (default :data:`DEFAULT_JOB_EPSILON_MILLI`)
from the budget of every budgeted input, atomically inside ``jobs.Submit``: a job that would
exceed a remaining budget is refused on chain, and a job on chain has paid. Each provider's node
then adds noise calibrated to that same ε on its own node, with OpenDP's mechanisms.

A listing without ``privacy_budget`` declares no budget: its results carry no noise and repeated
queries on it are bounded only by the grant's ``max_runs`` (the default, so that listings made
before the budget existed keep their meaning).

Everything here is deterministic (validators must agree) and JSON-native.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

DEFAULT_JOB_EPSILON_MILLI = 1_000  # ε = 1 per job unless the job's params say otherwise
MAX_EPSILON_MILLI = 1_000_000  # ε = 1000: any larger is no privacy at all
DEFAULT_PERIOD_S = 86_400


class PrivacyBudget(BaseModel):
    """What one consumer may spend on one listing per period (strict: no coercion, no extra fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    epsilon_milli: Annotated[StrictInt, Field(ge=1, le=MAX_EPSILON_MILLI, description="ε × 1000 per period")]
    period_s: Annotated[StrictInt, Field(ge=3_600, le=366 * 86_400)] = DEFAULT_PERIOD_S


class BadEpsilon(ValueError):
    """A job's ``params.epsilon_milli`` is not an ε this contract accepts."""


def noisy_job(job_type: str, params: Mapping[str, Any]) -> bool:
    """Whether a job's results carry DP noise, and so spend the budget of its budgeted inputs."""
    return job_type == "aggregation" or (job_type == "he_scoring" and params.get("mode") == "statistics")


def job_epsilon_milli(params: Mapping[str, Any]) -> int:
    """The ε × 1000 a job spends on each budgeted input: ``params.epsilon_milli`` or the default."""
    value = params.get("epsilon_milli", DEFAULT_JOB_EPSILON_MILLI)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_EPSILON_MILLI:
        raise BadEpsilon(f"params.epsilon_milli must be an integer 1..{MAX_EPSILON_MILLI} (ε × 1000)")
    return value


def budget_of(listing: Mapping[str, Any] | None) -> PrivacyBudget | None:
    """The budget a listing as the chain stores it declares, or None (a stored listing was validated)."""
    raw = (listing or {}).get("privacy_budget")
    return None if raw is None else PrivacyBudget.model_validate(raw)


def period_start(now: int, budget: PrivacyBudget) -> int:
    """Periods are aligned windows of block time: [k·period_s, (k+1)·period_s)."""
    return now - now % budget.period_s
