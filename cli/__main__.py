"""``python -m cli ...`` is the ``trtbatch`` command (for machines where it is not installed)."""

from cli import main

main()
