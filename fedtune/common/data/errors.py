"""The one exception the data layer raises for files an operator must fix."""


class DataError(ValueError):
    """The data file is missing or malformed; the message names the file and every bad line."""
