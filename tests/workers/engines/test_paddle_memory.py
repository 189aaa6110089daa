"""A Paddle predictor's memory follows the batch it runs, and is given back when it idles: a real
predictor of a model with wide activations, measured (RSS) in a fresh process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT

MEASURE = r'''
import json, sys, zlib  # noqa: F401  # zlib before paddle
from pathlib import Path
import numpy as np, paddle, psutil
from common.manifest import InputSpec, ModelManifest, Preprocess
from common.spec import NodeInfo, build_spec
from workers.engines.paddle_engine import PaddlePredictor, release_memory
from workers.process.memory import malloc_trim  # what an idle slot does after releasing

class Wide(paddle.nn.Layer):  # four 32-channel convolutions at 128x128: ~67 MB per activation at batch 32
    def __init__(self):
        super().__init__()
        self.convs = paddle.nn.LayerList([paddle.nn.Conv2D(3 if i == 0 else 32, 32, 3, padding=1) for i in range(4)])
        self.fc = paddle.nn.Linear(32, 10)
    def forward(self, x):
        for conv in self.convs:
            x = paddle.nn.functional.relu(conv(x))
        return self.fc(x.mean(axis=[2, 3]))

out = Path(sys.argv[1])
paddle.seed(0)
model = Wide()
model.eval()
x_spec = paddle.static.InputSpec([None, 3, 128, 128], "float32", name="x")
paddle.jit.save(model, str(out / "inference"), input_spec=[x_spec])
manifest = ModelManifest(name="wide", max_batch_size=64, input=InputSpec(name="x", shape=(-1, 3, 128, 128)),
                         preprocess=Preprocess())
spec = build_spec(manifest, "v1", NodeInfo(paddle_version="2.6.2", cpu_count=2), "cpu", "cpu", "fp32", 32)
pred = PaddlePredictor(spec, out, out / "opt")
rss = lambda: psutil.Process().memory_info().rss >> 20
x = np.random.default_rng(0).random((32, 3, 128, 128), np.float32)
name = pred.output_names[0]
r = {"built": rss()}
builds = []
native = pred._native
pred._native = lambda: (builds.append(1), native())[1]
small = pred.run(x[:2])[name]; r["b2"] = rss()
big = pred.run(x)[name]; r["b32"] = rss()
again = pred.run(x[:2])[name]; r["b2_after_b32"] = rss()
pred.run(x)
r["rebuilds_while_busy"] = len(builds)  # b2, b32, b2, b32: only the first b32 (larger than any before)
r["released_predictors"] = release_memory(); malloc_trim(); r["released"] = rss()
after = pred.run(x[:2])[name]
r["same_outputs"] = bool(np.array_equal(small, again) and np.array_equal(small, after)
                         and np.allclose(big[:2], small, atol=1e-5))
print(json.dumps(r))
'''


def test_predictor_memory_follows_the_batch_size_and_is_released(tmp_path: Path) -> None:
    """Before: a batch of 32 left ~500 MB held for good - by every later smaller batch and while idle."""
    script = tmp_path / "measure.py"  # a file: paddle.jit.save reads the layer's source
    script.write_text(MEASURE)
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    grown = r["b32"] - r["built"]
    assert grown > 100, r  # the measurement sees the batch of 32 at all
    assert r["b2_after_b32"] <= r["b2"] + grown / 4, r  # a smaller batch does not keep the larger one's tensors
    assert r["released_predictors"] == 1 and r["released"] <= r["built"] + grown / 4, r
    assert r["rebuilds_while_busy"] == 1, r  # a smaller batch, or a size seen before, reuses the predictor
    assert r["same_outputs"], r  # rebuilt for a larger batch, released and rebuilt: the same numbers
