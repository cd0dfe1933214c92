"""``python -m trpc`` is the ``trpc`` command."""

import sys

from ._cli import main

sys.exit(main())
