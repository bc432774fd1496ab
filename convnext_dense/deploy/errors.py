"""The deploy tools' error for a model, option or output folder the export does not allow."""
from __future__ import annotations


class ExportError(ValueError):
    """The model, the options or the output directory do not allow the export."""
