"""Allow ``python -m hss_pu``."""

from hss_pu.cli import main

raise SystemExit(main())
