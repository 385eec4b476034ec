"""What differs per kind lives on ``Kind``; these are the facts the handlers rely on."""

from __future__ import annotations

import pytest

from iyclo.contract.events import JobChanged, PodChanged
from iyclo.core.kind import Kind
from iyclo.errors import InvalidError


def test_both_spellings_come_from_the_kind() -> None:
    assert Kind.of("pod") is Kind.of("Pod") is Kind.POD
    assert Kind.of("job") is Kind.JOB
    assert (Kind.POD.api_name, Kind.JOB.api_name) == ("Pod", "Job")
    assert (Kind.POD.value, Kind.JOB.value) == ("pod", "job")  # as the store records it
    with pytest.raises(InvalidError, match="is not Pod, Job or Network"):
        Kind.of("Service")


def test_units_and_their_owners() -> None:
    assert Kind.POD.units("web") == ("iyclo-pod-web.service",)
    assert Kind.JOB.units("etl") == ("iyclo-job-etl.timer", "iyclo-job-etl.service")
    assert Kind.JOB.service("etl") == "iyclo-job-etl.service"
    assert Kind.POD.unit_patterns() == ["iyclo-pod-*.service"]
    assert Kind.JOB.unit_patterns() == ["iyclo-job-*.timer", "iyclo-job-*.service"]
    assert Kind.JOB.owner_of_unit("iyclo-job-a-b.timer") == "a-b"
    assert Kind.JOB.owner_of_unit("iyclo-job-a-b.service") == "a-b"
    assert Kind.POD.owner_of_unit("iyclo-job-a.service") is None
    assert Kind.POD.owner_of_unit("iyclo-pod-a.timer") is None  # not a unit pods have
    assert Kind.POD.owner_of_unit("iyclo-a.slice") is None


def test_running_states_and_events() -> None:
    assert (Kind.POD.running, Kind.JOB.running) == ("running", "scheduled")
    assert isinstance(Kind.POD.changed("web", "running", generation=2), PodChanged)
    event = Kind.JOB.changed("etl", "scheduled", generation=3, error="x")
    assert isinstance(event, JobChanged)
    assert (event.name, event.state, event.generation, event.error) == ("etl", "scheduled", 3, "x")
