"""The deploy tools' error for a model, option or output folder the export does not allow."""
from __future__ import annotations


class ExportError(ValueError):
    """The model, the options or the output directory do not allow the export."""


def refuse_detector(problems: list[str]) -> None:
    """Raise an :class:`ExportError` listing ``problems`` (each a setting the exported graph
    would not honour, named by its config key), if there are any."""
    if problems:
        raise ExportError('cannot export this detector: ' + '; '.join(problems))
