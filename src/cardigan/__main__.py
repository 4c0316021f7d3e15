"""``python -m cardigan``: the ``cardigan`` command."""

import sys

from cardigan.cli import main

sys.exit(main())
