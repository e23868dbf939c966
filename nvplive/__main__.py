"""``python -m nvplive``: the ``nvplive`` command line."""

from nvplive.cli import main

raise SystemExit(main())
