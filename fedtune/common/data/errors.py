"""The one exception the data layer raises for files an operator must fix."""


class DataError(ValueError):
    """The data file is missing or malformed; the message names the file and every bad line.
    ``public``: the same without any record's own values (what a node may send)."""

    def __init__(self, message: str, public: str | None = None):
        super().__init__(message)
        self.public = public if public is not None else message
