"""The command-line program over ``conf/``: validation, the run loop, Hydra glue."""
