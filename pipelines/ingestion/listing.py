"""The listing of an image folder (local or an object-storage prefix) by Ray tasks, so the driver's memory does not
grow with the folder: one task lists a level (the source, then each split folder: its own files and its sub-folders'
names), then one task per class folder lists everything below it. Each task's names stay in the object store as an
Arrow table (`path`, `split`, `relative`, `class`); the driver keeps the references, the skipped entries and counts.
"""
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.data.decode import IMAGE_SUFFIXES, suffix_reason
from pipelines.storage.files import filesystem

SPLIT_NAMES = {"train": "train", "test": "test", "val": "test", "valid": "test", "validation": "test"}
LISTED = pa.schema([("path", pa.binary()), ("split", pa.string()), ("relative", pa.string()), ("class", pa.string())])


def printable(path) -> str:
    """A path as text, also when its name is not valid UTF-8 (those bytes shown as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_uri(source) -> bool:
    return "://" in str(source)


@dataclass(frozen=True)
class Place:
    """A folder or prefix to list: `location` (a path or URI) in split `split`, `below` its parts relative to the
    split's folder (the first is the class), `relative` its path relative to the source (as `source` keeps names).
    `recursive`: everything below it (a class folder), else its own files and its sub-folders' names (a level)."""
    split: str
    location: str
    below: tuple[str, ...] = ()
    relative: str = ""
    recursive: bool = False

    def inside(self, name: str, split: Optional[str] = None) -> "Place":
        """The sub-folder `name`: a class folder, or with `split`, that split's folder (a level)."""
        relative = f"{self.relative}/{name}" if self.relative else name
        location = f"{self.location.rstrip('/')}/{name}" if is_uri(self.location) else os.path.join(self.location, name)
        if split is not None:
            return Place(split, location, (), relative)
        return Place(self.split, location, (*self.below, name), relative, recursive=True)


@dataclass
class Listed:
    """What one listing task found beside its table of files to check."""
    skipped: list[dict] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # a level's sub-folders to list (not hidden, not links)
    class_entries: dict[str, int] = field(default_factory=dict)  # entries below each class folder, skipped included
    class_files: dict[str, int] = field(default_factory=dict)  # files to check per class ("" for no class)
    error: Optional[str] = None  # the place itself could not be listed
    location: str = ""  # the place listed

    @property
    def files(self) -> int:
        return sum(self.class_files.values())

    def merge(self, other: "Listed") -> None:
        """Adds what another task found; a sub-folder it could not list is a skipped entry."""
        self.skipped += other.skipped + ([{"file": other.location, "reason": other.error}] if other.error else [])
        for name, count in other.class_entries.items():
            self.class_entries[name] = self.class_entries.get(name, 0) + count
        for name, count in other.class_files.items():
            self.class_files[name] = self.class_files.get(name, 0) + count


class Found:
    """The rows of a table of files to check, gathered while a place is listed."""

    def __init__(self, place: Place):
        self.place, self.listed = place, Listed(location=printable(place.location))
        self.paths: list[bytes] = []
        self.relatives: list[str] = []
        self.classes: list[Optional[str]] = []

    def add(self, path, below: tuple, reason: Optional[str], shown: str, relative: str) -> None:
        """`below`: the path's parts below the split's folder (the first is the class when there are two or more)."""
        label = printable(below[0]) if len(below) > 1 else None
        if label is not None:
            self.listed.class_entries[label] = self.listed.class_entries.get(label, 0) + 1
        if reason is None and Path(below[-1]).suffix.lower() not in IMAGE_SUFFIXES:
            reason = suffix_reason(below[-1])
        if reason is not None:
            self.listed.skipped.append({"file": shown, "reason": reason})
            return
        self.paths.append(os.fsencode(path))
        self.relatives.append(relative)
        self.classes.append(label)
        self.listed.class_files[label or ""] = self.listed.class_files.get(label or "", 0) + 1

    def table(self) -> pa.Table:
        return pa.table([self.paths, [self.place.split] * len(self.paths), self.relatives, self.classes], schema=LISTED)


def link_problem(path: Path) -> Optional[str]:
    try:
        path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        return "dangling symbolic link" if path.is_symlink() else f"cannot be read ({error.strerror})"
    return None


def walk_files(folder: Path, recursive: bool = True) -> Iterator[tuple[Path, Optional[str]]]:
    """Every entry below `folder` (with `recursive` false: its own files), in name order, with the reason it is
    skipped (None: a file to read). Folder links are not followed (no loops); hidden files and folders are named,
    not read."""
    for root, folders, files in os.walk(folder):
        folders.sort()
        for name in [name for name in folders if name.startswith(".") or (Path(root) / name).is_symlink()]:
            folders.remove(name)
            hidden = name.startswith(".")
            yield Path(root) / name, "hidden folder (not read)" if hidden else "link to a folder (not followed)"
        if not recursive:
            folders.clear()
        for name in sorted(files):
            path = Path(root) / name
            reason = "hidden file" if name.startswith(".") else link_problem(path)
            if reason is None and not path.is_file():
                reason = "not a regular file"
            yield path, reason


def list_local(place: Place) -> Found:
    folder, found = Path(place.location), Found(place)
    if not folder.is_dir():
        found.listed.error = f"image folder not found: {place.location}"
        return found
    for path, reason in walk_files(folder, place.recursive):
        below = (*place.below, *path.relative_to(folder).parts)
        found.add(path, below, reason, printable(path), printable(Path(place.relative, path.relative_to(folder))))
    if not place.recursive:
        found.listed.folders = sorted(entry.name for entry in os.scandir(folder) if not entry.name.startswith(".")
                                      and entry.is_dir(follow_symlinks=False))
    return found


def list_object_storage(place: Place) -> Found:
    fs, base = filesystem(place.location)
    found, base = Found(place), base.rstrip("/")
    try:
        entries = fs.get_file_info(pafs.FileSelector(base, recursive=place.recursive))
    except (FileNotFoundError, OSError) as error:
        found.listed.error = f"image prefix not found or not readable: {place.location} ({error})"
        return found
    prefix = place.location.split("://", 1)[0] + "://"
    for info in sorted(entries, key=lambda info: info.path):
        name = info.path.removeprefix(base + "/")
        parts = tuple(name.split("/"))
        if info.type == pafs.FileType.Directory:
            if not place.recursive and parts[-1].startswith("."):
                found.listed.skipped.append({"file": f"{place.location.rstrip('/')}/{name}",
                                             "reason": "hidden folder (not read)"})
            elif not place.recursive:
                found.listed.folders.append(name)
            continue
        hidden = any(part.startswith(".") for part in parts)
        found.add(f"{prefix}{info.path}", (*place.below, *parts), "hidden file" if hidden else None,
                  f"{place.location.rstrip('/')}/{name}", f"{place.relative}/{name}" if place.relative else name)
    return found


def list_place(place: Place) -> tuple[pa.Table, Listed]:
    """Ray task: the files to check under `place` and what else was found."""
    found = list_object_storage(place) if is_uri(place.location) else list_local(place)
    return found.table(), found.listed


def split_folders(names: list[str], default_split: str) -> dict[str, Optional[str]]:
    """{split: sub-folder name}: `train/` and `test/`|`val/` when present, else the whole folder (None)."""
    found = {SPLIT_NAMES[name.lower()]: name for name in names if name.lower() in SPLIT_NAMES}
    return found if "train" in found else {default_split: None}


def list_source(source: str, default_split: str) -> tuple[list, Listed]:
    """The tables of files to check (object references, one per listing task) and what the listing found. The
    source's level is listed first (its split folders), then each split's level, then its class folders at once."""
    import ray

    lister = ray.remote(num_returns=2)(list_place)
    root = Place(default_split, str(source))
    root_table, root_listed = lister.remote(root)
    root_listed = ray.get(root_listed)
    if root_listed.error:
        raise FileNotFoundError(root_listed.error)
    layout = split_folders(root_listed.folders, default_split)
    levels = []
    if None in layout.values():  # the source is the one split's folder
        levels.append((root_table, root_listed, root))
    else:
        for split, name in layout.items():
            place = root.inside(name, split)
            table, listed = lister.remote(place)
            levels.append((table, ray.get(listed), place))
    tables, listed, classes = [], Listed(), []
    for table, level, place in levels:
        tables.append(table)
        listed.merge(level)
        for name in level.folders:
            table, found = lister.remote(place.inside(name))
            tables.append(table)
            classes.append(found)
    for found in ray.get(classes):
        listed.merge(found)
    return tables, listed
