"""A provider's own policy, enforced on its own node before it sends anything.

The chain checks a job when it is submitted; the consumer's node checks its result. Neither is
enough against a consumer that runs a modified node: the only code a provider can trust is its
own. So before a provider's node sends a single byte of a job, it re-reads from the chain, for
each of its own inputs:

- the grant the job runs under: a grant on this asset, to this consumer, still ``granted``, not
  expired, within its runs, and naming the job's operation (which the listing must offer too);
- the listing version the job names, for its declared join keys and minimum group size;

and, while the protocol runs, the job type asks this policy about what it can observe:

- the column a PSI matches on must be one the listing declares as a join key (or the column this
  node's own configuration names as the dataset's key) -- never a sensitive column the consumer
  picked;
- a size a peer announces is checked against a bound before any memory is allocated from it,
  and a consumer's set smaller than the listing's minimum group size is refused (any non-empty
  intersection with it would be below the minimum);
- a listing with a privacy budget (services/common/privacy.py) has every noisy result this node
  releases carry Laplace noise for the ε the chain charged (:meth:`Policy.epsilon`), on values
  clamped to the bounds the params give (:meth:`Policy.bounds`); and a model listed under a
  budget scores at most d records per grant for its d weights (:meth:`Policy.scoring_rows`).

A violation raises :class:`PolicyViolation`. The lifecycle ends the job on chain with
``jobs.Abort`` and the violation as its reason, and the job type sends nothing more: no further
byte of the job leaves the node. Reasons name things (columns, bounds, grants), never values.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.privacy import BadEpsilon, PrivacyBudget, budget_of, job_epsilon_milli
from services.compute.jobtypes.base import JobRefused, JobSpec

__all__ = ["budget_of"]  # the lifecycle reads a listing's budget through this module

# The chain's job type -> the listing operation it needs (services/consensus/jobs/messages.py).
OPERATION_OF = {"psi": "psi", "psi_cardinality": "psi_cardinality", "aggregation": "aggregation",
                "he_scoring": "he_scoring", "supply_chain": "supply_chain_verification"}

MAX_BOUND = 1e12  # |lo|, |hi| of a column clamped for a noisy sum
DEFAULT_MAX_PEER_SET = 50_000_000  # elements a peer may announce; 16-48 bytes each on this node


class PolicyViolation(JobRefused):
    """The job breaks this provider's policy: the job is aborted on chain with this reason."""


@dataclass(frozen=True)
class InputPolicy:
    """What one of this node's listings allows, as the chain records the job's version of it."""

    asset: str
    min_group_size: int = 1
    join_keys: frozenset[str] = frozenset()
    dataset_key: str | None = None  # this node's own configured match column for the dataset
    privacy_budget: PrivacyBudget | None = None  # the listing's, as the job's version declares it
    max_runs: int = 1  # of the grant the job runs under

    def allows_key(self, column: str) -> bool:
        return column in self.join_keys or (column is not None and column == self.dataset_key)


@dataclass
class Policy:
    """The limits a job type enforces on the sizes and columns it sees during one job run."""

    max_peer_set: int = DEFAULT_MAX_PEER_SET
    inputs: Mapping[str, InputPolicy] = field(default_factory=dict)

    def of(self, asset: str) -> InputPolicy:
        return self.inputs.get(asset) or InputPolicy(asset)

    def peer_size(self, n: Any, what: str, *, bound: int | None = None) -> int:
        """A size a peer announced, checked before anything is allocated from it."""
        limit = self.max_peer_set if bound is None else min(bound, self.max_peer_set)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise PolicyViolation(f"the {what} announced is not a size")
        if n > limit:
            raise PolicyViolation(f"the {what} announced is above this node's bound of {limit}")
        return n

    def match_column(self, asset: str, column: str) -> None:
        """A PSI may match only on a declared join key of the listing (or this node's configured key)."""
        p = self.of(asset)
        if not p.allows_key(column):
            raise PolicyViolation(f"column {column} is not a join key of {asset}")

    def epsilon(self, asset: str, params: Mapping[str, Any]) -> float | None:
        """The ε this node's noise on ``asset`` must give (what the chain charged the consumer), or
        None if the listing declares no privacy budget (its results are exact)."""
        if self.of(asset).privacy_budget is None:
            return None
        try:
            return job_epsilon_milli(params) / 1000
        except BadEpsilon as exc:  # the chain refuses such a job; a node never trusts that alone
            raise PolicyViolation(str(exc)) from None

    def bounds(self, asset: str, params: Mapping[str, Any], column: str) -> tuple[float, float]:
        """``params.bounds[column]`` as (lo, hi): the range this node clamps a column to before a
        noisy sum, from which the sum's sensitivity follows. No sum is released without one."""
        raw = params.get("bounds")
        pair = raw.get(column) if isinstance(raw, dict) else None
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                        and abs(v) <= MAX_BOUND for v in pair) and pair[0] < pair[1]):
            raise PolicyViolation(f"{asset} has a privacy budget: params.bounds.{column} must be [lo, hi], "
                                  f"lo < hi, |lo| and |hi| at most {MAX_BOUND:.0e}: the range values are clamped to")
        return float(pair[0]), float(pair[1])

    def scoring_rows(self, asset: str, n: int, d: int) -> None:
        """HE scoring on a model listed under a privacy budget: at most d scores per grant (n rows
        a job, times the grant's runs). A logistic model has d weights and an intercept, d + 1
        unknowns, and each score gives one equation in them (the sigmoid polynomial is invertible
        on its range): d scores leave the model undetermined, d + 1 chosen ones reveal it."""
        p = self.of(asset)
        if p.privacy_budget is not None and n * p.max_runs > d:
            raise PolicyViolation(f"{asset} is a model under a privacy budget: at most {d} scores per grant for its "
                                  f"{d} weights, and this grant allows {p.max_runs} runs of the {n} rows announced")

    def consumer_set(self, asset: str, n: int) -> None:
        """A consumer's set below the minimum group size can only give an intersection below it."""
        k = self.of(asset).min_group_size
        if 0 < n < k:
            raise PolicyViolation(f"the consumer's set is smaller than the minimum group size of {asset} ({k})")


def grant_runs(record: Mapping[str, Any], grants: Mapping[str, Mapping | None], asset: str) -> int:
    """The max_runs of the grant the job's input ``asset`` runs under (1 if not found)."""
    for raw in record.get("inputs") or []:
        if raw.get("asset") == asset:
            return int((grants.get(raw.get("grant")) or {}).get("max_runs", 1))
    return 1


def join_keys(metadata: Mapping[str, Any] | None) -> frozenset[str]:
    columns = (metadata or {}).get("columns") or []
    return frozenset(c["name"] for c in columns if isinstance(c, dict) and c.get("join_key") is True)


def check_grants(spec: JobSpec, record: Mapping[str, Any], member: str, grants: Mapping[str, Mapping | None],
                 listings: Mapping[str, Mapping | None], now: float | None = None) -> None:
    """Every input of ``member`` in the job runs under a live grant to the job's consumer for the
    job's operation, on the listing version the job names. Raises PolicyViolation."""
    now = time.time() if now is None else now
    operation = OPERATION_OF.get(spec.type, spec.type)
    for raw in record.get("inputs") or []:
        if raw.get("provider") != member:
            continue
        asset, gid = raw.get("asset"), raw.get("grant")
        grant = grants.get(gid) if gid else None
        if grant is None:
            raise PolicyViolation(f"input {asset} names no grant on chain")
        if grant.get("asset") != asset or grant.get("consumer") != spec.consumer or grant.get("provider") != member:
            raise PolicyViolation(f"grant {gid} is not a grant of {asset} to {spec.consumer}")
        if grant.get("status") != "granted":
            raise PolicyViolation(f"grant {gid} is {grant.get('status')}")
        if operation not in (grant.get("operations") or []):
            raise PolicyViolation(f"grant {gid} does not allow {operation}")
        if int(grant.get("expires_at", 0)) <= now:
            raise PolicyViolation(f"grant {gid} has expired")
        if int(grant.get("runs_used", 0)) > int(grant.get("max_runs", 0)):
            raise PolicyViolation(f"grant {gid} has no runs left")
        listing = listings.get(asset)
        if listing is None:
            raise PolicyViolation(f"listing {asset} v{raw.get('version')} is not on chain")
        if operation not in (listing.get("operations") or []):
            raise PolicyViolation(f"listing {asset} does not offer {operation}")
