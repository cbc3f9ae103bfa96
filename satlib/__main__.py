"""``python -m satlib <command>``: see :mod:`satlib.cli`."""

from satlib.cli import main

raise SystemExit(main())
