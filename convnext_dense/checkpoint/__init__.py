"""Checkpoints: safe reading and atomic writing, source layouts, conversion, safe loading."""
from .convert import Conversion, convert_and_save, convert_checkpoint, convert_file, load_pretrained
from .formats import CONVERTERS, detect_format
from .io import CheckpointError, read_checkpoint, write_checkpoint_atomically

__all__ = ['CONVERTERS', 'CheckpointError', 'Conversion', 'convert_and_save',
           'convert_checkpoint', 'convert_file', 'detect_format', 'load_pretrained',
           'read_checkpoint', 'write_checkpoint_atomically']
