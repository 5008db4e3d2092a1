"""`python -m components`: the `sortflow` command."""

import sys

from components.cli import main

sys.exit(main())
