"""The two data errors: every message is one sentence that names the file or folder and what to do."""


class DataError(ValueError):
    """A data file is missing, truncated or not what it claims to be."""


class DataNotFoundError(DataError):
    """The data set's files are not where the loader looked."""
