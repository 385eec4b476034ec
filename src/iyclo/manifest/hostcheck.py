"""``python -m iyclo.manifest.hostcheck``: ``check_host_path`` for a unit's ExecStartPre=.

systemd, not iyclod, starts a job's runs (its timer) and restarts a pod after a failure
(Restart=), and each start has runc resolve the bind-mount sources again: a symbolic link
planted under an allowed root since the last check would be followed. A unit that runs this
first refuses that start, with one line per problem in its journal::

    python -m iyclo.manifest.hostcheck --root /srv --bind /srv/app/data \\
        --profile-root /etc/iyclo/seccomp --profile /etc/iyclo/seccomp/app.json

Exit status 0 when every path is fine, 1 when one is refused, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from iyclo.manifest.policy import check_host_path

PROG = "iyclo-hostcheck"


def problems(
    binds: Sequence[str],
    roots: Sequence[str],
    profiles: Sequence[str],
    profile_roots: Sequence[str],
) -> list[str]:
    """One line per refused path, naming it first."""
    found = [(path, check_host_path(path, roots)) for path in binds]
    found += [(path, check_host_path(path, profile_roots, profile=True)) for path in profiles]
    return [f"{path}: refused: {problem}" for path, problem in found if problem is not None]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Refuse a start whose host paths go through a symbolic link."
    )
    parser.add_argument("--root", action="append", default=[], help="allowed bind-mount root")
    parser.add_argument("--bind", action="append", default=[], help="bind-mount source")
    parser.add_argument("--profile-root", action="append", default=[], help="profile directory")
    parser.add_argument("--profile", action="append", default=[], help="seccomp profile")
    args = parser.parse_args(argv)
    lines = problems(args.bind, args.root, args.profile, args.profile_root)
    for line in lines:
        print(f"{PROG}: {line}", file=sys.stderr)
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
