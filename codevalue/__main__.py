"""`python -m codevalue ...` is the `codevalue` command; launchers (`accelerate launch -m codevalue`) need it."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
