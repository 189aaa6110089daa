"""trtbatch workers, in three rooms:

* ``workers.engines``  - a predictor spec in, a built predictor out (Paddle Inference today);
* ``workers.pipeline`` - the batch and calibration tasks: fetch, decode, infer, postprocess, write;
* ``workers.process``  - being a process in a fleet: start, launcher, heartbeats, leases, orphan
  sweep, warm start, health check, metrics.

Dependencies point one way: process -> pipeline -> engines, all of them -> common.
"""
