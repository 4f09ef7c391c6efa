"""The SET tutorial reproduction (see README.md)."""
