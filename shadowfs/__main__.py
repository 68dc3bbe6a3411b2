"""`python -m shadowfs`: the same as the `shadowfs` console script."""

import sys

from shadowfs.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
