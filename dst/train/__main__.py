"""``python -m dst.train``: the same program as ``dst-train``."""

from dst.app.cli import main

main()
