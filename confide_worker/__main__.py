"""``python -m confide_worker``: serve one job's worker over stdin/stdout."""

import sys

from confide_worker.main import main

sys.exit(main())
