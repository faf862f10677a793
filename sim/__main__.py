"""``python -m sim``: list, run and sweep the built-in scenarios."""

import sys

from ._cli import main

sys.exit(main())
