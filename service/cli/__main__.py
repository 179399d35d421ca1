"""`python -m service.cli`: the same as the `unlearn` console script."""

from service.cli import main

raise SystemExit(main())
