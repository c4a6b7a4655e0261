"""`python -m router`: the same as the `router` command (the supervisor of --workers uses it)."""

import sys

from router.cli import main

sys.exit(main())
