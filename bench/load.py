#!/usr/bin/env python3
"""Load benchmark: 10k and 100k small images end to end; peak memory of producer, worker, Redis.

    python bench/load.py                       trtbatch bench-load -n 10000 -n 100000

Prints one JSON line (see producer/bench_load.py).
"""

from __future__ import annotations

import sys
import zlib  # noqa: F401  # before paddle
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from producer.cli import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "bench-load", *sys.argv[1:]]
    main()
