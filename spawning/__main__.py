"""``python -m spawning``: the same as the ``spawning`` command."""

from spawning.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
