"""Errors raised for user mistakes: one actionable sentence, no traceback in the CLI."""


class UrbanRepError(Exception):
    """Base class for every error caused by input or configuration, not by a bug.

    The CLI prints ``str(error)`` on one line and exits with code 1. Messages name the file,
    the record and the fix.
    """


class BundleError(UrbanRepError):
    """A city bundle (or a layer handed to the bundle writer) is invalid."""


class GraphError(UrbanRepError):
    """A region graph does not follow the schema."""


class ConfigError(UrbanRepError):
    """A configuration value is unknown or out of range."""


class ExportError(UrbanRepError):
    """GIS export, figures or the run report cannot be written from the given tables."""
