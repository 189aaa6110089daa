"""trtbatch common: settings, schemas, Redis key layout, result and artifact stores, errors."""

__version__ = "0.1.0"
