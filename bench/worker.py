"""A worker for the benchmarks: ``trtbatch worker``'s process plus the naive baseline task.

    python -m bench.worker --device cpu --name bench@local ...     (the arguments of workers.process.main)

Importing ``bench.naive`` registers the baseline task; a spawned pool process re-imports this
module as its ``__main__`` and so registers it too. Production workers never see the task.

``BENCH_SWITCH_INTERVAL_MS``: the GIL's switch interval of the worker process (Python's default is
5 ms), for experiments on how thread slots share the GIL; not a worker setting.
"""

from __future__ import annotations

import os
import sys

import bench.naive  # noqa: F401  # registers the naive baseline task
from workers.process.main import main

if __name__ == "__main__":
    if os.environ.get("BENCH_SWITCH_INTERVAL_MS"):
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL_MS"]) / 1000)
    sys.exit(main())
