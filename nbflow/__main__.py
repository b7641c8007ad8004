"""`python -m nbflow`: the command line (see nbflow.cli)."""

import sys

from nbflow.cli import main

sys.exit(main())
