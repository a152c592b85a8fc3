"""`python -m tscale_train.plan ...`: the same as `tscale plan ...`."""

import sys

from .cli import main

sys.exit(main())
