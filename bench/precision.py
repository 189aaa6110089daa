#!/usr/bin/env python3
"""Precision benchmark: FP32 vs INT8 vs bf16 on CPU, bare and end to end, plus digits accuracy.

    python bench/precision.py --model resnet50 --model mobilenet_v2 --threads 2
    trtbatch bench-precision                                  (the same, from the CLI)

Prints one JSON line (see producer/bench_precision.py).
"""

from __future__ import annotations

import sys
import zlib  # noqa: F401  # before paddle
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from producer.cli import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "bench-precision", *sys.argv[1:]]
    main()
