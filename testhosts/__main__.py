"""``python -m testhosts``: see testhosts.cli."""

import sys

from testhosts.cli import main

sys.exit(main())
