"""The `iyclo` console script's entry point: answers ``--version`` before anything else.

Importing the click group (click, rich-click, the command modules) is most of the CLI's
start-up; ``iyclo --version`` needs none of it, so it is answered here, importing
nothing but the package's version. Everything else goes to ``iyclo.cli.main``.
"""

from __future__ import annotations

import sys


def start() -> None:
    if sys.argv[1:] == ["--version"]:
        from iyclo import __version__

        sys.stdout.write(f"iyclo, version {__version__}\n")  # click's version_option wording
        return
    from iyclo.cli.main import main

    main()
