"""A per-process LRU of built predictors, keyed by ``spec.key()``: one per (model version, engine,
backend, precision, device, shape range). Building is serialised, so two threads of one process
never build the same predictor twice."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from common.spec import PredictorSpec
from workers import engines
from workers.engines.base import Predictor

log = logging.getLogger("trtbatch.engines")


class PredictorCache:
    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: PredictorSpec, model_dir: Path, opt_cache_dir: Path,
            on_build: Callable[[float], None] | None = None) -> Predictor:
        key = spec.key()
        with self._lock:
            pred = self._items.get(key)
            if pred is not None:
                self._items.move_to_end(key)
                return pred
            pred = engines.build(spec, model_dir, opt_cache_dir)
            log.info("built %s/%s predictor for %s in %.2fs", spec.backend, spec.precision,
                     spec.version_id, pred.build_s)
            if on_build is not None:
                on_build(pred.build_s)
            self._items[key] = pred
            while len(self._items) > self.capacity:
                _, old = self._items.popitem(last=False)
                old.close()
            return pred

    def loaded(self) -> list[dict[str, object]]:
        return [p.describe() for p in self._items.values()]

    def close(self) -> None:
        with self._lock:
            while self._items:
                self._items.popitem()[1].close()
