"""``python -m supercm ...`` (and ``torchrun ... -m supercm ...``): the ``supercm`` command."""

import sys

from .cli import main

sys.exit(main())
