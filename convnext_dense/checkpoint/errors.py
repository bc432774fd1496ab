"""The checkpoint package's error, below the modules that raise it (io, layouts, conversion)."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, recognised or converted."""
