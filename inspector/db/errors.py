"""Errors about the database itself (as opposed to the rows in it)."""

from inspector.errors import InspectorError


class DatabaseRevisionError(InspectorError):
    """The database schema is missing or at another revision than the code expects."""
