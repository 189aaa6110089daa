"""trtbatch workers: the Celery app, tasks, predictor building and the per-device launcher."""
