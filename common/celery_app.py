"""The Celery app, configured from what we measured on Celery 5.x + Redis.

* Late acks + reject on worker lost + prefetch 1 by default (``prefetch_multiplier``): a batch is
  acknowledged only after its results are written, and a child that dies mid-batch hands the batch
  back at once.
* Visibility is a *lease*, not a task-length bound: kombu restores an unacked message whose
  timestamp is older than ``visibility_timeout_s``; workers/process/lease.py renews the timestamps of
  every message the worker holds, every ``lease_refresh_s``. So a batch held by a live worker is
  never run twice however long it takes, and one held by a dead worker is back within
  ``visibility_timeout_s + restore_interval_s`` (~11 s by default) instead of the default ~100 s.
* JSON (and msgpack) only: pickle is refused, here and at worker start.
* No Celery result backend: results go to our own store (common/store.py).

Importing this module never imports Paddle, so the producer can use the same app to send tasks.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from common import keys
from common.config import Settings
from common.errors import ConfigError
from common.redisconn import broker_ssl, broker_url, resolve_url

INFER_TASK = "trtbatch.infer_batch"
CALIBRATE_TASK = "trtbatch.calibrate"
CONVERT_TASK = "trtbatch.convert"
ACCEPT_CONTENT = ("json", "msgpack")
#: Publishing (a producer's batches, a worker's retries) rides out a Redis restart as the redis-py
#: clients do (common/redisconn.py): connection retries for ~40 s, then the error. Celery's default
#: gives up after ~0.6 s, so a producer sending while Redis restarted crashed mid-submit.
PUBLISH_RETRY_POLICY = {"max_retries": 40, "interval_start": 0, "interval_step": 0.5, "interval_max": 1.0}


def check_serializers(conf: Any) -> None:
    """Refuse any configuration that would let pickle in (remote code execution on workers)."""
    accepted = {str(c).lower() for c in conf.accept_content or ()}
    used = {str(s).lower() for s in (conf.task_serializer, conf.result_serializer, conf.event_serializer)}
    # accept_content takes names or content types: pickle's is application/x-python-serialize
    if any(marker in c for c in accepted | used for marker in ("pickle", "x-python-serialize")):
        raise ConfigError("refusing to run: pickle is configured as a Celery serializer; trtbatch "
                          "accepts only json and msgpack")


def transport_options(settings: Settings) -> dict[str, Any]:
    return {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": settings.restore_interval_s,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": RESTORE_MUTEX_EXPIRE_S,
        "global_keyprefix": keys.BROKER_PREFIX,
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "retry_on_timeout": True,
    }


#: kombu's restore sweep holds its mutex for milliseconds. A worker killed inside a sweep leaves
#: the mutex behind until it expires, and no worker sweeps until then: kombu's default (300 s)
#: stalled every redelivery for 5 minutes, and 10 s once put a killed worker's batch back after
#: 20.8 s instead of ~11 s (tests/integration/test_faults.py). Sweeps running side by side are
#: safe: each message is restored in a WATCH transaction on the unacked hash, so only one wins.
RESTORE_MUTEX_EXPIRE_S = 2

#: Longest the worker's event loop waits in one read of the remote-control pub/sub connection.
PUBSUB_READ_TIMEOUT_S = 1.0


def harden_kombu_redis() -> None:
    """Work around two kombu 5.7 / redis-py 8 bugs that took workers down when Redis restarted
    mid-job (both seen in tests/integration/test_faults.py::test_redis_restart_mid_job):

    * After a lost connection, Celery's consumer closes it and kombu detaches the channel from its
      transport, yet still reaches Redis through that channel - to put its delivered messages back,
      and to ack a task that finishes after the loss. Building a client for a detached channel raised
      AttributeError (``None.client`` / ``None.hostname``), which Celery treats as unrecoverable: the
      worker exited. It now raises redis ``ConnectionError``, what kombu and Celery expect from a dead
      connection: the restore is skipped and the ack logged as failed; the messages, still in Redis'
      unacked hash, are handed out again by the visibility sweep (a repeated batch changes nothing).
    * kombu reads the remote-control pub/sub connection (Flower, ``celery inspect``) from the event
      loop when its socket looks readable, with redis-py's *blocking* read: no timeout. A worker was
      found stuck for good in that read after a Redis restart (the connection had been re-established
      under kombu, so nothing was coming). The read now waits at most ``PUBSUB_READ_TIMEOUT_S``."""
    import redis
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams
    if getattr(original, "trtbatch", False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            raise redis.exceptions.ConnectionError("this broker channel's connection is closed")
        return original(self, asynchronous)

    original_parse = kombu_redis.PrefixedRedisPubSub.parse_response

    def parse_response(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs:  # kombu's event-loop read (redis-py's own callers pass arguments)
            kwargs = {"block": False, "timeout": PUBSUB_READ_TIMEOUT_S}
        return original_parse(self, *args, **kwargs)

    _connparams.trtbatch = True  # type: ignore[attr-defined]
    kombu_redis.Channel._connparams = _connparams
    kombu_redis.PrefixedRedisPubSub.parse_response = parse_response


def make_app(settings: Settings, url: str | None = None, **overrides: Any) -> Celery:
    url = url or resolve_url(settings)
    harden_kombu_redis()
    app = Celery("trtbatch", set_as_current=False)
    app.conf.update(
        broker_url=broker_url(settings, url),
        broker_use_ssl=broker_ssl(settings, url),
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_channel_error_retry=True,
        task_publish_retry=True,
        task_publish_retry_policy=dict(PUBLISH_RETRY_POLICY),
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=list(ACCEPT_CONTENT),
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=settings.prefetch_multiplier,
        task_time_limit=settings.task_hard_time_limit_s,
        task_create_missing_queues=True,
        task_default_queue="trtbatch.any.any.fp32",
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_enable_remote_control=True,
        worker_deduplicate_successful_tasks=False,
    )
    app.conf.update(overrides)
    check_serializers(app.conf)
    return app
