"""What differs between a pod, a job and a network, on the kind itself (the template is mkosi's
``Verb`` enum with methods): one dispatch reads these instead of branching on strings.

The store records the kind in lower case (``pod``), manifests and every front spell it
capitalised (``Pod``): both spellings come from here.
"""

from __future__ import annotations

from enum import StrEnum

from iyclo.contract.events import JobChanged, PodChanged
from iyclo.core import naming
from iyclo.errors import InvalidError
from iyclo.manifest.model import Job, Manifest, Network


class Kind(StrEnum):
    POD = "pod"
    JOB = "job"
    NETWORK = "network"

    @classmethod
    def of(cls, spelling: str) -> Kind:
        """The kind of a record (``pod``) or a manifest (``Pod``)."""
        try:
            return cls(spelling.lower())
        except ValueError:
            raise InvalidError(f'kind: "{spelling}" is not Pod, Job or Network') from None

    @classmethod
    def of_manifest(cls, manifest: Manifest) -> Kind:
        if isinstance(manifest, Network):
            return cls.NETWORK
        return cls.JOB if isinstance(manifest, Job) else cls.POD

    @property
    def api_name(self) -> str:
        """The manifest's and the API's spelling: ``Pod``, ``Job``."""
        return self.value.capitalize()

    @property
    def running(self) -> str:
        """The desired state of one that is not stopped: a pod runs, a job is scheduled,
        a network exists."""
        if self is Kind.NETWORK:
            return "created"
        return "scheduled" if self is Kind.JOB else "running"

    def service(self, name: str) -> str:
        """The service unit that runs it: the pod's containers, or one run of the job."""
        return naming.unit_name(self.value, name)

    def units(self, name: str) -> tuple[str, ...]:
        """Every unit of its own (its slice aside), the one that starts the rest first;
        a network has none."""
        if self is Kind.NETWORK:
            return ()
        if self is Kind.JOB:
            return (naming.unit_name(self.value, name, "timer"), self.service(name))
        return (self.service(name),)

    def unit_patterns(self) -> list[str]:
        """Globs matching every unit of this kind, for finding orphans."""
        if self is Kind.NETWORK:
            return []
        suffixes = ("timer", "service") if self is Kind.JOB else ("service",)
        return [naming.unit_name(self.value, "*", suffix) for suffix in suffixes]

    def owner_of_unit(self, unit: str) -> str | None:
        """The name of the pod or job a unit of this kind belongs to, else None."""
        parsed = naming.parse_unit_name(unit)
        if parsed is None or parsed[0] != self.api_name or unit not in self.units(parsed[1]):
            return None
        return parsed[1]

    def changed(
        self, name: str, state: str, *, generation: int = 0, error: str = ""
    ) -> PodChanged | JobChanged:
        """The event that says its state changed."""
        event = JobChanged if self is Kind.JOB else PodChanged
        return event(name=name, state=state, generation=generation, error=error)
