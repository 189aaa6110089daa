"""A module-level Celery app for the ``celery`` command (Flower, inspect, purge):

    celery -A workers.process.celery_app flower --port=5555
    celery -A workers.process.celery_app inspect active

It is built from the same settings as every trtbatch process (``TRTBATCH_*``), so it sees the
same queues and key prefix. Workers are started with ``trtbatch worker``, not through this module.
"""

from __future__ import annotations

from common.celery_app import make_app
from common.config import Settings
from workers.pipeline.tasks import register

app = make_app(Settings.from_env())
register(app)
