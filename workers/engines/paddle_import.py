"""The one place trtbatch imports Paddle.

paddlepaddle 2.6.2 segfaults on the first use of zlib (gzip, saving a PNG, reading a compressed
archive) in a process where ``zlib`` was first imported *after* ``paddle``. Every module that needs
Paddle calls ``paddle()`` (or ``inference()``) here instead of importing it, so the workaround lives
once. The import is lazy: a worker's main process and the CLI never load Paddle unless they build a
predictor or a model.
"""

from __future__ import annotations

import os
import zlib  # noqa: F401  # must be imported before paddle: see the module docstring
from types import ModuleType

#: Paddle's C++ log level (glog): 2 = errors only. Info and warning lines ("--- Running analysis",
#: oneDNN pass lists) otherwise flood worker logs and the CLI; an operator's own value wins.
GLOG_LEVEL = "2"


def paddle() -> ModuleType:
    """The ``paddle`` package, imported after ``zlib`` with glog quieted."""
    os.environ.setdefault("GLOG_minloglevel", GLOG_LEVEL)
    import paddle as module

    return module


def inference() -> ModuleType:
    """``paddle.inference`` (Config, create_predictor, PrecisionType)."""
    return paddle().inference
