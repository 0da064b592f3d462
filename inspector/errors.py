"""The domain errors of the core: each says what was wrong and what was expected.

Entry points (the CLI, the web service, the workers) map these to exit codes or HTTP statuses
in one place each; the core never decides how an error is shown.
"""


class InspectorError(Exception):
    """Base of every error the core raises on purpose."""


class ImageDecodeError(InspectorError):
    """A file or payload is not an image we can use (empty, truncated, corrupt, too large)."""


class DatasetError(InspectorError):
    """A dataset folder cannot be trained or evaluated on as it is."""


class ModelStoreError(InspectorError):
    """A model or version is missing, or the store cannot do what was asked."""


class ModelIntegrityError(ModelStoreError):
    """Stored weights fail their hash check or do not match their metadata."""


class WeightsNotFoundError(InspectorError):
    """Pretrained weights are needed but not on this machine (nothing is downloaded)."""


class ConfigurationError(InspectorError):
    """A setting or an argument is missing or out of range."""
