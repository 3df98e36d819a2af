"""``python -m winnow``: the same command line as ``winnow``."""

from .cli import main

main()
