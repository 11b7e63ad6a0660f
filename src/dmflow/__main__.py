"""``python -m dmflow`` is the same as the ``dmflow`` command."""

from dmflow.cli import main

main()
