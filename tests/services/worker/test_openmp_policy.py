"""The OpenMP wait policy the entry point puts in the environment before torch loads."""

from __future__ import annotations

from services.worker.openmp_policy import apply_omp_wait_policy
from services.worker.settings import WorkerSettings


def test_passive_by_default() -> None:
    environ: dict[str, str] = {}
    assert apply_omp_wait_policy(WorkerSettings(), environ) == "PASSIVE"
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_active_when_configured() -> None:
    environ: dict[str, str] = {}
    assert apply_omp_wait_policy(WorkerSettings(worker_omp_wait_policy="active"), environ) == "ACTIVE"
    assert environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_an_operator_variable_wins() -> None:
    environ = {"OMP_WAIT_POLICY": "active"}
    assert apply_omp_wait_policy(WorkerSettings(worker_omp_wait_policy="passive"), environ) == "active"
    assert environ == {"OMP_WAIT_POLICY": "active"}


def test_inherit_leaves_the_environment_alone() -> None:
    environ: dict[str, str] = {}
    assert apply_omp_wait_policy(WorkerSettings(worker_omp_wait_policy="inherit"), environ) is None
    assert environ == {}
