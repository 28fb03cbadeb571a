"""``python -m ucal``: the same as the ``ucal`` command."""

import sys

from ucal.cli import main

if __name__ == "__main__":
    sys.exit(main())
