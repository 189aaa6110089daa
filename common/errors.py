"""One error hierarchy for trtbatch; it decides what is retried.

``TrtbatchError`` splits into:

* ``RetryableError`` - the work may succeed if tried again (Redis unreachable, the process holding
  it died, a payload that should be there is not). A task retries it with exponential backoff, a
  bounded number of times, then dead-letters the batch (``DeadLetterError``).
* ``PermanentError`` - trying again cannot help (bad image, bad model, a precision this node
  cannot serve, an expired payload, a cancelled job). A permanent error on one image becomes that
  image's record; on a whole batch it fails every image of the batch at once, never retried.

What is not a ``PermanentError`` is retried (``is_retryable``): a ``DecodeError`` of a payload or an
exception nobody foresaw costs a few bounded retries, never the image on the first try.

Each class carries a short machine-readable ``code``: the ``error_code`` of result records, the
``code`` label of the ``trtbatch_image_errors_total`` metric, the failure counts of ``status``.
"""

from __future__ import annotations


class TrtbatchError(Exception):
    """Base class of every error trtbatch raises on purpose."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(TrtbatchError):
    """Settings are missing, unknown or malformed."""

    code = "config"


class DecodeError(TrtbatchError):
    """A message or record could not be decoded (wrong schema version, corrupt body)."""

    code = "decode"


class RetryableError(TrtbatchError):
    """Transient failure: the same work may succeed on another try."""

    code = "retryable"


class BrokerError(RetryableError):
    """Redis could not be reached or answered with an error."""

    code = "broker"


class WorkerLostError(RetryableError):
    """The process that held the work died before finishing it."""

    code = "worker_lost"


class PayloadRaceError(RetryableError):
    """A batch's claim-check payload is missing while it should still be in Redis (its job is younger
    than the payload TTL): it may appear or be resent, so the batch is tried again."""

    code = "payload_race"


class PermanentError(TrtbatchError):
    """Trying again cannot help."""

    code = "permanent"


class ImageError(PermanentError):
    """One image cannot be decoded or preprocessed (corrupt, too large, unreadable...)."""

    code = "bad_image"


class InputError(PermanentError):
    """A user-supplied path, manifest or argument is unusable."""

    code = "bad_input"


class ModelError(PermanentError):
    """A model is missing, broken, or does not match its manifest."""

    code = "bad_model"


class PrecisionUnsupportedError(PermanentError):
    """This node cannot build the requested predictor (no CUDA, no TensorRT, no quantized model...)."""

    code = "precision_unsupported"


class JobError(PermanentError):
    """A job id is unknown, or the job is in a state that forbids the request."""

    code = "job"


class WaitTimeoutError(JobError):
    """``--wait --timeout`` passed before the job ended; the job itself goes on. Exit 3 in the CLI,
    so a script tells it from a refusal (2) and from failed images (1)."""

    code = "wait_timeout"
    exit_code = 3


class PayloadMissingError(PermanentError):
    """A batch's claim-check payload is gone (expired TTL, or the job was purged)."""

    code = "payload_missing"


class JobCancelledError(PermanentError):
    """The batch's job was cancelled before the batch ran."""

    code = "cancelled"


class UnservableError(PermanentError):
    """No live worker could serve the job's queue for longer than ``unservable_grace_s``."""

    code = "unservable"


class DeadLetterError(PermanentError):
    """A batch gave up on: retried ``task_max_retries`` times, or delivered more than
    ``max_deliveries`` times without finishing (its process kept dying)."""

    code = "dead_letter"


class TimeLimitError(DeadLetterError):
    """A batch ran past ``task_hard_time_limit_s`` and its process was killed."""

    code = "time_limit"


class CalibrationError(PermanentError):
    """A calibration job cannot run or produced nothing usable."""

    code = "calibration"


class ConversionError(PermanentError):
    """A conversion to ONNX failed, or its result does not match the source closely enough."""

    code = "conversion"


def is_retryable(exc: BaseException) -> bool:
    """The retry policy in one line: everything but a ``PermanentError`` is worth another try."""
    return not isinstance(exc, PermanentError)
