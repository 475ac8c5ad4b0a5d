"""``python -m rtc_worker``: the same as ``rtc-worker``."""

import sys

from rtc_worker.cli import main

sys.exit(main())
