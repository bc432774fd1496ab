"""What ``tools/infer.py`` writes into its output folder, and what an earlier run wrote.

Layout of ``OUT`` (every path in a record is relative to ``OUT``)::

    predictions.jsonl        one JSON record per image, appended (and flushed to disk) as soon
                             as the image is predicted; an unreadable image gets a record
                             with its ``error``
    predictions.json         every record, written atomically when the run ends
    vis/<name>               the drawing, in the image's own format
    class_maps/<stem>.png    segmentation: the class map (uint16 PNG)

``<name>`` is the image's path relative to the folder that holds all inputs (a single input
folder: its file names), so ``a/x.jpg`` and ``b/x.jpg`` keep their folders and ``x.jpg`` and
``x.png`` their suffixes: one output per input. Class maps are named ``<name>`` with the
suffix replaced by ``.png``, or ``<name>.png`` where two inputs would share that name.

A folder of an earlier run holds only these entries, and every file under ``vis/`` and
``class_maps/`` is named by a record of its ``predictions.jsonl`` or ``predictions.json``
(the record is written before the image's files, so a killed run's folder is recognised
too). ``--force`` replaces exactly such a folder's files; a folder holding anything else is
refused, with or without ``--force``.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

from ..utils import first_n_and_more

JSON_FILE = 'predictions.json'
JSONL_FILE = 'predictions.jsonl'
VIS_DIR = 'vis'
CLASS_MAP_DIR = 'class_maps'
ENTRIES = (JSON_FILE, JSONL_FILE, VIS_DIR, CLASS_MAP_DIR)
#: The record keys that name files under OUT.
_FILE_KEYS = ('vis', 'class_map')


def output_names(images: Sequence[Path], inputs: Sequence[str | os.PathLike]) -> list[str]:
    """One distinct relative name per image (POSIX separators): its path relative to the
    folder that holds every input (an input folder counts as its own holder)."""
    anchors = [os.path.abspath(item) if Path(item).is_dir() else
               os.path.dirname(os.path.abspath(item)) for item in inputs]
    base = os.path.commonpath(anchors) if anchors else os.getcwd()
    names = [PurePosixPath(*Path(os.path.relpath(os.path.abspath(image), base)).parts)
             for image in images]
    return [str(name) for name in names]


def class_map_names(names: Sequence[str]) -> list[str]:
    """``x.jpg`` -> ``x.png``; where two names would give one map name, ``x.jpg.png``."""
    stems = [str(PurePosixPath(name).with_suffix('.png')) for name in names]
    counts = Counter(stems)
    chosen = [stem if counts[stem] == 1 else f'{name}.png' for stem, name in zip(stems, names)]
    seen: Counter[str] = Counter()
    unique = []
    for name in chosen:  # only names like x.png + x.png.jpg can still meet here
        seen[name] += 1
        unique.append(name if seen[name] == 1 else
                      str(PurePosixPath(name).with_suffix(f'.{seen[name]}.png')))
    return unique


def _records(path: Path, lines: bool) -> list[dict] | None:
    """The records of a predictions file, None if it is not one. A JSON Lines file may end in
    a partial line (a run killed while writing it)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        if lines:
            rows = text.splitlines()
            records = [json.loads(row) for row in rows[:-1] if row.strip()]
            if rows and rows[-1].strip():
                try:
                    records.append(json.loads(rows[-1]))
                except ValueError:
                    if text.endswith('\n'):
                        return None  # a complete last line that is not JSON
        else:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get('images'), list):
                return None
            records = data['images'] + list(data.get('failed') or [])
    except ValueError:
        return None
    if not all(isinstance(r, dict) and isinstance(r.get('image'), str) for r in records):
        return None
    return records


def _named_files(record: dict, out_dir: Path) -> list[str]:
    """The files under ``out_dir`` a record names, relative to it. Records of earlier
    versions had no ``vis`` (the drawing was ``vis/<stem>.jpg``) and named the class map by
    its path as the tool was given it."""
    names = [record[k] for k in _FILE_KEYS if isinstance(record.get(k), str)]
    if 'vis' not in record and 'error' not in record:
        names.append(f'{VIS_DIR}/{PurePosixPath(record["image"]).stem}.jpg')
        if isinstance(record.get('class_map'), str):
            with contextlib.suppress(ValueError):  # a class map path outside out_dir
                names.append(Path(record['class_map']).resolve().relative_to(
                    out_dir.resolve()).as_posix())
    return names


def earlier_output(out_dir: Path) -> tuple[list[Path], list[str]]:
    """The files of an earlier run in ``out_dir`` and what is not one of them.

    Returns ``(files, foreign)``: the files an earlier run wrote (its predictions files and
    the drawings and class maps they name), and the entries (relative paths) that no
    earlier run wrote; ``foreign`` is empty when the whole folder is an earlier output.
    """
    foreign = [name for name in sorted(os.listdir(out_dir)) if name not in ENTRIES]
    listed: set[str] = set()
    files = []
    for name, lines in ((JSONL_FILE, True), (JSON_FILE, False)):
        path = out_dir / name
        if not path.exists() and not path.is_symlink():
            continue
        records = _records(path, lines) if path.is_file() and not path.is_symlink() else None
        if records is None:
            foreign.append(name)
            continue
        files.append(path)
        listed.update(name for record in records for name in _named_files(record, out_dir))
    if not files:  # no predictions file: nothing here was recognisably written by a run
        foreign.extend(d for d in (VIS_DIR, CLASS_MAP_DIR) if (out_dir / d).exists())
        return [], sorted(foreign)
    for folder in (VIS_DIR, CLASS_MAP_DIR):
        root = out_dir / folder
        if root.is_symlink() or (root.exists() and not root.is_dir()):
            foreign.append(folder)
            continue
        for current, dirs, names in os.walk(root):
            for name in sorted(dirs + names):
                path = Path(current) / name
                relative = path.relative_to(out_dir).as_posix()
                if path.is_symlink() or (name in names and relative not in listed):
                    foreign.append(relative)
                elif name in names:
                    files.append(path)
    return files, sorted(foreign)


def check_infer_dir(out_dir: Path, force: bool) -> list[Path]:
    """Refuse an output folder this run may not write; return an earlier run's files there
    (to delete, with ``force``, once the new run is ready to start).

    Raises:
        FileExistsError: ``out_dir`` is not a folder, holds files no earlier run of the tool
            wrote (even with ``force``), or holds an earlier run's output without ``force``.
    """
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        raise FileExistsError(f'{out_dir} exists and is not a folder; give a new or empty '
                              '--out-dir')
    if not any(out_dir.iterdir()):
        return []
    files, foreign = earlier_output(out_dir)
    if foreign:
        raise FileExistsError(
            f'{out_dir} holds files that tools/infer.py did not write '
            f'({first_n_and_more(foreign)}); give a new or empty --out-dir: --force replaces '
            'only an earlier tools/infer.py output (predictions.json(l) and the drawings and '
            'class maps they list), never other files')
    if not force:
        raise FileExistsError(f'{out_dir} holds an earlier tools/infer.py output '
                              f'({len(files)} files); pass --force to replace it')
    return files


def remove_earlier_output(out_dir: Path, files: Sequence[Path]) -> None:
    """Delete an earlier run's files (as :func:`check_infer_dir` found them) and the
    folders under ``vis/`` and ``class_maps/`` that this leaves empty."""
    for path in files:
        path.unlink(missing_ok=True)
    for folder in (VIS_DIR, CLASS_MAP_DIR):
        root = out_dir / folder
        if not root.is_dir():
            continue
        for current, _, _ in os.walk(root, topdown=False):
            if not os.listdir(current):
                os.rmdir(current)


class RecordWriter:
    """``predictions.jsonl``: one line per image, on disk before the next image starts.

    Opened exclusively: a second run writing into the same folder at the same time is
    refused instead of interleaving its records.
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / JSONL_FILE
        try:
            self._file: IO[str] = open(self.path, 'x')
        except FileExistsError:
            raise FileExistsError(f'{self.path} appeared after the folder was checked: another '
                                  'tools/infer.py run is writing this --out-dir') from None

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + '\n')
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


__all__ = ['CLASS_MAP_DIR', 'JSONL_FILE', 'JSON_FILE', 'RecordWriter', 'VIS_DIR',
           'check_infer_dir', 'class_map_names', 'earlier_output', 'output_names',
           'remove_earlier_output']
