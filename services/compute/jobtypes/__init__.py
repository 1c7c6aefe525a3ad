"""Job types: each a plug-in behind the interface in base.py. The lifecycle looks them up here."""

from __future__ import annotations

from services.compute.jobtypes.base import JobType
from services.compute.jobtypes.aggregation import AggregationJob
from services.compute.jobtypes.he_scoring import HeScoringJob
from services.compute.jobtypes.psi import PsiCardinalityJob, PsiJob
from services.compute.jobtypes.supply_chain import SupplyChainJob

# chain job type -> the class that runs it.
JOB_TYPES: dict[str, type[JobType]] = {cls.name: cls for cls in (PsiJob, PsiCardinalityJob, AggregationJob,
                                                                  HeScoringJob, SupplyChainJob)}


def job_type(name: str) -> JobType | None:
    cls = JOB_TYPES.get(name)
    return cls() if cls else None
