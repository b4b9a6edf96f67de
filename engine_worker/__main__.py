"""``python -m engine_worker``: the same as the ``engine-worker`` command."""

from engine_worker.cli import main

raise SystemExit(main())
