"""Reproductions: each folder holds a study and, where a paper needs its own parts, the components
its configs plug in by ``_target_`` (run from the repository root, or with it on PYTHONPATH)."""
