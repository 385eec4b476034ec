"""Child process for the crash test: applies records until killed.

It prints `ack <seq>` only after `Store.apply` has returned, so every ack the
parent reads is a write the store promised was durable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from iyclo.store import Store

GENERATIONS_PER_NAME = 3


def record(seq: int) -> tuple[str, dict[str, Any], str]:
    """The (name, manifest, digest) of write number `seq`; the parent recomputes it to verify."""
    name = f"rec-{seq // GENERATIONS_PER_NAME:05d}"
    manifest = {
        "seq": seq,
        "image": f"registry.example/app:{seq}",
        "env": {f"VAR_{i}": "v" * (seq % 50) for i in range(seq % 7)},
        "payload": "x" * 2048,
    }
    return name, manifest, f"sha256:{seq:064d}"


def generation(seq: int) -> int:
    return seq % GENERATIONS_PER_NAME + 1


def main() -> None:
    with Store.open(Path(sys.argv[1])) as store:
        for seq in range(1_000_000):
            name, manifest, digest = record(seq)
            store.apply(name, "pod", manifest, digest)
            sys.stdout.write(f"ack {seq}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
