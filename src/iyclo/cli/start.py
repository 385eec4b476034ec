"""The `iyclo` console script's entry point: answers ``--version`` before anything else.

Importing the click group (click, the command modules) is most of the CLI's start-up;
``iyclo --version`` needs none of it, so it is answered here, importing nothing but the
package's version. Everything else goes to ``iyclo.cli.main``, written in plain click:
rich-click (~15 ms to import) renders the help, so it is brought in, patching click's
classes before the commands are made, only when help is asked for.

The cyclic garbage collector is paused while those modules are imported: making their
classes, functions and click's commands ran it ~30 times, to collect ~200 objects, ~2 ms of
each ``iyclo ps`` (4%); it runs again for the command itself, which may last (``events``).
"""

from __future__ import annotations

import gc
import sys

HELP = ("-h", "--help")


def wants_help(argv: list[str]) -> bool:
    """Help is printed: asked for, or no command given (a group then shows its help)."""
    return not argv or any(word in HELP for word in argv)


def rich_help() -> None:
    import rich_click.rich_click as config
    from rich_click.patch import patch

    config.USE_MARKDOWN = True
    config.SHOW_ARGUMENTS = True
    config.STYLE_ERRORS_SUGGESTION = "dim"
    patch()


def start() -> None:
    argv = sys.argv[1:]
    if argv == ["--version"]:
        from iyclo import __version__

        sys.stdout.write(f"iyclo, version {__version__}\n")  # click's version_option wording
        return
    gc.disable()
    try:
        if wants_help(argv):
            rich_help()
        from iyclo.cli.main import main
    finally:
        gc.enable()
    main()
