"""``python -m urbanrep`` is the same as the ``urbanrep`` console script."""

import sys

from urbanrep.cli import main

sys.exit(main())
