"""`python -m mirror` entry point, and the console script's (`mirror`, pyproject.toml)."""

import sys


def run() -> int:
    """mirror.cli.main for the command line, with SIGINT and SIGTERM held (mirror.signals)
    from before the CLI's own modules import: a stop in those first milliseconds waits for
    the run to begin and stops it there, a report like any other (it was a KeyboardInterrupt
    traceback, exit 1, or SIGTERM's silent death, no report). Only the interpreter's own
    start-up, before this, is left to the signals' default actions."""
    from mirror.signals import hold

    hold()
    from mirror.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
