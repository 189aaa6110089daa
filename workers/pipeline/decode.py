"""Decode a batch's images into one float32 buffer, in the slot's thread pool (Pillow releases the
GIL while decoding and resizing)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from common.errors import ImageError
from common.imaging import Preprocessor
from common.schemas import PayloadItem


def decode_all(pool: ThreadPoolExecutor, threads: int, pre: Preprocessor, items: list[PayloadItem],
               chw: tuple[int, int, int]) -> tuple[np.ndarray, list[tuple[str, ...] | ImageError]]:
    """Decode every item into one batch buffer; per item its notes, or the ``ImageError`` saying why
    it cannot be used."""
    buf = np.empty((len(items), *chw), np.float32)

    def one(i: int) -> tuple[str, ...] | ImageError:
        item = items[i]
        if item.error:
            return ImageError(item.error)
        try:
            return pre.into(item.data, buf[i])
        except ImageError as exc:
            return exc
        except Exception as exc:  # a decoder bug must not take the batch down
            return ImageError(f"cannot decode image: {type(exc).__name__}: {exc}")

    if threads <= 1:  # handing each image to one pool thread costs ~25 %
        return buf, [one(i) for i in range(len(items))]
    return buf, list(pool.map(one, range(len(items))))
