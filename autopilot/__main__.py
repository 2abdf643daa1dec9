"""``python -m autopilot``: the ``autopilot`` command line (``autopilot.cli``) without the script installed."""

import sys

from autopilot.cli import main

sys.exit(main())
