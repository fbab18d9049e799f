"""``python -m fedloom.cli``: the same as the ``fedloom`` command."""

from fedloom.cli._main import main

if __name__ == "__main__":
    raise SystemExit(main())
