"""``python -m service [options]``: the server alone, without the console script (tests and bench start it so)."""

import sys

from service.server import main

raise SystemExit(main(sys.argv[1:]))
