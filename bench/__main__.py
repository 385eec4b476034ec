"""iyclo's speed and memory beside plain podman and systemd-run, in one run (issue #15).

Run on demand, never as test assertions:

    .venv/bin/python -m bench --pods 200 --rounds 10

It boots a private test host on this machine (Debian 12 here; run it inside a fresh
trixie root for Debian 13), prints a table and writes bench/results/<date>-debian<N>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from bench.suite import run  # noqa: E402  (after the harness is on the path)


def table(rows: list[dict[str, str]]) -> str:
    keys = ("what", "iyclo", "baseline", "goal", "note")
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=200, help="pods made for the 'at N' figures")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per timed figure")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    pods, rounds = max(10, min(args.pods, 500)), max(3, min(args.rounds, 100))
    started = time.time()
    about, rows = run(pods, rounds)
    about.update(pods=pods, rounds=rounds, seconds=round(time.time() - started))
    print(f"{about['os']}, Podman {about['podman']}, systemd {about['systemd']}, "
          f"{about['cpus']} x {about['cpu']}, load {about['load']:.1f} at start")  # fmt: skip
    print(table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y-%m-%d')}-debian{about['debian'] or 'unknown'}.json"
    path.write_text(json.dumps({"machine": about, "rows": rows}, indent=2) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
