"""``python -m agent``: the same as ``confide-agent``."""

import sys

from agent.main import main

sys.exit(main())
