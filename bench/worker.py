"""A worker for the benchmarks: ``trtbatch worker``'s process plus the naive baseline task.

    python -m bench.worker --device cpu --name bench@local ...     (the arguments of workers.process.main)

Importing ``bench.naive`` registers the baseline task; a spawned pool process re-imports this
module as its ``__main__`` and so registers it too. Production workers never see the task.
"""

from __future__ import annotations

import sys

import bench.naive  # noqa: F401  # registers the naive baseline task
from workers.process.main import main

if __name__ == "__main__":
    sys.exit(main())
