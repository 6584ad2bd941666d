"""``python -m ezipc_adapters``: the ``ezipc`` command."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
