"""How long the core waits for systemd and Podman, in one place.

Every wait of the core is bounded by one of these; pods and jobs share them, so a
stop that may take N seconds for one takes N seconds for the other.
"""

from __future__ import annotations

from typing import Final

UNIT_GONE: Final = 15.0
"""A stopped transient unit must be unloaded before one of its name can be made again;
systemd does it within a few hundred ms (measured), unless the unit is stuck."""

SYSTEMD_JOB: Final = 150.0
"""One start, stop or restart job of systemd: a pod's start may pull an image and start
every container, a stop waits out the containers' stop timeouts."""

RUN_START: Final = 30.0
"""A run asked for with ``run_job`` shows a new invocation within this."""

JOURNALCTL: Final = 10.0
"""One read of the journal; a journal that cannot answer in this is skipped."""

UNIT_POLL: Final = 0.05
"""Pause between two reads of a unit that is being waited for."""

JOURNAL_SETTLE_TRIES: Final = 20
JOURNAL_SETTLE_PAUSE: Final = 0.1
"""journald writes systemd's message about a run's end a moment after the end: read it
again this often, this long apart, before a run is taken as unaccounted."""

RUN_SWEEP_INTERVAL: Final = 30.0
"""How often runs are settled from the journal even when no signal asked for it."""

HEALTH_INTERVAL: Final = 2.0
"""How often the daemon asks whether Podman and systemd are there (``core.health``): a
Podman that went away is reported and its return acted on within this."""

HEALTH_PROBE: Final = 10.0
"""One probe of a dependency: a Podman that takes longer to answer a ping failed it."""
