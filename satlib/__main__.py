"""``python -m satlib <command>``: see :mod:`satlib.cli`."""

from satlib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
