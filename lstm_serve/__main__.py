"""``python -m lstm_serve COMMAND ...``: the console script without installing it."""

from lstm_serve.cli import main

raise SystemExit(main())
