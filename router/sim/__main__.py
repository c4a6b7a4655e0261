"""`python -m router.sim ...`: `router simulate ...` without going through `router`'s own parser."""

from router.sim.command import main

raise SystemExit(main())
