"""``python -m dst.train``: the same program as ``dst-train``.

The program is found by its console-script name rather than imported, so the training library never
imports the Hydra app that sits above it (``dst.app`` uses ``dst.train``, not the other way round).
"""

import sys
from importlib.metadata import entry_points

scripts = entry_points(group="console_scripts", name="dst-train")
if not scripts:
    sys.exit("error: dst-train is not installed in this Python environment; run 'pip install -e .' "
             "(or 'make test', which does) in the dst checkout.")
next(iter(scripts)).load()()
