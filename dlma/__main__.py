"""`python -m dlma ...` is the `dlma` command, e.g. for `accelerate launch -m dlma train ...`."""

from .cli import main

raise SystemExit(main())
