"""``python -m producer ...`` is the ``trtbatch`` command (for machines where it is not installed)."""

import zlib  # noqa: F401  # before paddle (paddlepaddle 2.6.2 segfaults on first zlib use otherwise)

from producer.cli import main

main()
