"""`python -m mailward`: the same as the `mailward` command (cli/main.py)."""

import sys

from mailward.cli.main import main

sys.exit(main())
