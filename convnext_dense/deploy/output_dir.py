"""An output folder that a tool writes whole: staged next to it, then swapped in by rename.

The rules (``tools/export.py``'s ``--out-dir``/``--force``):

- A folder that does not exist, or an empty one, is written.
- A folder that holds exactly what an earlier run wrote (the caller's ``recognise`` says so:
  the export's ``end2end.onnx`` + ``deploy.json``) is replaced only with ``force``.
- A folder holding anything else is refused, with or without ``force``: nothing the user
  owns is deleted.
- The new output is written into a staging folder next to the target and swapped in at the
  end: the target is checked again then (another run may have written it meanwhile), the old
  folder is renamed aside, the new one renamed in, and only then the old output's own files
  are deleted; so a failure or a kill never leaves the target half written or empty.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mmengine.logging import print_log

from ..utils import first_n_and_more

#: ``recognise(folder)``: whether ``folder`` (existing, non-empty) is an earlier run's output
Recognise = Callable[[Path], bool]


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def check_output_dir(out_dir: Path, force: bool, recognise: Recognise, what: str,
                     written: Sequence[str]) -> str:
    """Whether ``out_dir`` may be written: ``'absent'``, ``'empty'`` or ``'previous'``.

    Args:
        out_dir: The output folder.
        force: Replace an earlier run's output.
        recognise: Whether a non-empty folder is an earlier run's output.
        what: The output's name for messages (``'export'``).
        written: The names the output consists of, for messages.

    Raises:
        FileExistsError: ``out_dir`` is a file or a link, holds something else than an
            earlier output, or holds an earlier output and ``force`` is not set.
    """
    if out_dir.is_symlink():
        raise FileExistsError(f'{out_dir} is a symbolic link: give the folder itself '
                              f'({os.path.realpath(out_dir)}) or a new folder')
    if not out_dir.exists():
        return 'absent'
    if not out_dir.is_dir():
        raise FileExistsError(f'{out_dir} exists and is not a folder; give a new or empty '
                              'folder')
    entries = _entries(out_dir)
    if not entries:
        return 'empty'
    if not recognise(out_dir):
        raise FileExistsError(
            f'{out_dir} holds files that are not an earlier {what} '
            f'({first_n_and_more(entries)}); give a new or empty folder: --force replaces '
            f'only an earlier {what} ({" + ".join(written)}), never other files')
    if not force:
        raise FileExistsError(f'{out_dir} holds an earlier {what} ({", ".join(entries)}); '
                              'pass --force to replace it')
    return 'previous'


def make_staging_dir(out_dir: Path) -> Path:
    """A new, uniquely named folder next to ``out_dir`` (created with the process's default
    permissions: the kernel applies the umask, nothing reads or changes it)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    while True:
        staging = out_dir.parent / f'.{out_dir.name}.{secrets.token_hex(4)}.staging'
        with contextlib.suppress(FileExistsError):
            staging.mkdir()
            return staging


@contextlib.contextmanager
def staged_output(out_dir: Path, force: bool, recognise: Recognise, what: str,
                  written: Sequence[str]) -> Iterator[Path]:
    """Yield a staging folder to write the output into; on success swap it in as ``out_dir``.

    An exception (or a refusal at the swap) removes the staging folder and leaves
    ``out_dir`` as it was.
    """
    staging = make_staging_dir(out_dir)
    try:
        yield staging
        swap_in(staging, out_dir, force, recognise, what, written)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the folder this run created
        raise


def swap_in(staging: Path, out_dir: Path, force: bool, recognise: Recognise, what: str,
            written: Sequence[str]) -> None:
    """Replace ``out_dir`` by ``staging``, checking ``out_dir`` again first.

    The old folder is renamed aside and checked once more under its private name (nothing
    can be added to it unseen after that), the new one renamed in, then the old output's
    files (``written``) and its folder are deleted. Anything else found in it at that point
    is kept, in the folder renamed aside, and named in a warning.
    """
    state = check_output_dir(out_dir, force, recognise, what, written)
    if state == 'absent':
        try:
            os.rename(staging, out_dir)  # fails if a non-empty out_dir appeared meanwhile
        except OSError as exc:
            raise FileExistsError(f'{out_dir} was created by someone else while this {what} '
                                  'ran; nothing was replaced') from exc
        return
    aside = out_dir.parent / f'.{out_dir.name}.{secrets.token_hex(4)}.replaced'
    os.rename(out_dir, aside)
    try:
        if _entries(aside) and not recognise(aside):
            raise FileExistsError(f'{out_dir} changed while this {what} ran and now holds '
                                  f'other files ({first_n_and_more(_entries(aside))}); '
                                  'nothing was replaced')
        os.rename(staging, out_dir)
    except BaseException as exc:
        try:
            os.rename(aside, out_dir)  # put it back as it was
        except OSError:  # out_dir was created again meanwhile: say where the old one is
            raise FileExistsError(f'{out_dir} was created by someone else during the swap; '
                                  f'its previous content is kept in {aside}') from exc
        raise
    for name in written:
        (aside / name).unlink(missing_ok=True)
    try:
        aside.rmdir()
    except OSError:
        print_log(f'{aside}: the replaced {what}\'s folder was kept, it holds files written '
                  f'there during the swap: {first_n_and_more(_entries(aside))}',
                  logger='current', level=logging.WARNING)


__all__ = ['check_output_dir', 'make_staging_dir', 'staged_output', 'swap_in']
