#!/usr/bin/env python3
"""Throughput benchmark: bare predictor vs end to end vs a naive Celery baseline, in one run.

    python bench/throughput.py --model resnet50 --precision fp32 --batch-size 16 --threads 2
    trtbatch bench --model mobilenet_v2 --precision int8            (the same, from the CLI)

Prints one JSON line (see producer/bench.py for every field).
"""

from __future__ import annotations

import sys
import zlib  # noqa: F401  # before paddle
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from producer.cli import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "bench", *sys.argv[1:]]
    main()
