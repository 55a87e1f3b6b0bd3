"""``python -m conveyor``: the conveyor command line."""

from conveyor.cli.main import main

raise SystemExit(main())
