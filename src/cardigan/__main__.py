"""``python -m cardigan``: the ``cardigan`` command."""

import sys

from .cli import main

sys.exit(main())
