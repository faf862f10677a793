"""``python -m sim``: list, run and sweep the built-in scenarios."""

import os
import sys

from ._cli import main

try:
    status = main()
    sys.stdout.flush()
except BrokenPipeError:
    # The reader went away (``| head``): nothing more to say to it.  Point
    # stdout at nothing, so that the flush at exit does not complain again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    status = 1
sys.exit(status)
