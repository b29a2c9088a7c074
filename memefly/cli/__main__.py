"""python -m memefly.cli: the `memefly` command."""

import sys

from memefly.cli import main

sys.exit(main())
