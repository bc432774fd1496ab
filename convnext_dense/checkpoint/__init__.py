"""Checkpoints: safe reading and atomic writing, source layouts (:mod:`.layouts`),
conversion, safe loading."""
from .convert import Conversion, convert_and_save, convert_checkpoint, convert_file, load_pretrained
from .errors import CheckpointError
from .io import read_checkpoint, write_checkpoint_atomically
from .layouts import CONVERTERS, LAYOUTS, detect_format

__all__ = ['CONVERTERS', 'LAYOUTS', 'CheckpointError', 'Conversion', 'convert_and_save',
           'convert_checkpoint', 'convert_file', 'detect_format', 'load_pretrained',
           'read_checkpoint', 'write_checkpoint_atomically']
