"""Benchmarks (``trtbatch bench``, ``bench-precision``, ``bench-load``; bench/gpu_fleet.py on GPU hosts)
and the naive Celery baseline they compare against. Nothing in producer/ or workers/ imports them."""
