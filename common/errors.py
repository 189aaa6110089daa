"""One error hierarchy for trtbatch.

``TrtbatchError`` splits into:

* ``RetryableError`` - the work may succeed if tried again (broker hiccup, worker lost, a
  transient Redis failure). Celery's ``autoretry_for`` retries these with backoff, a bounded
  number of times, then the batch is dead-lettered.
* ``PermanentError`` - trying again cannot help (bad image, bad model, a precision this node
  cannot serve). A permanent error on one image becomes that image's error record; a permanent
  error on a whole batch (the predictor cannot be built) fails every image of the batch at once.

Each class carries a short machine-readable ``code`` used in result records and metrics.
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


class PayloadMissingError(PermanentError):
    """A batch's claim-check payload is gone (expired TTL, or the job was purged)."""

    code = "payload_missing"


class CalibrationError(PermanentError):
    """A calibration job cannot run or produced nothing usable."""

    code = "calibration"
