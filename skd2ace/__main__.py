"""``python -m skd2ace``: the command line (see :mod:`skd2ace.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
