"""The program and its files, put in memory files that bwrap copies into the scratch dir."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

ENTRY_POINT = PurePosixPath("main.py")


@dataclass(frozen=True)
class StagedFile:
    fd: int  # a memfd holding the contents, read from the start
    path: PurePosixPath  # relative to the scratch dir


@contextlib.contextmanager
def staged_files(code: str, files: Mapping[str, str] | None) -> Iterator[list[StagedFile]]:
    """Memory files for `code` (as main.py) and `files`; closed on exit."""
    contents = {ENTRY_POINT: code}
    for name, text in (files or {}).items():
        path = scratch_relative(name)
        if path == ENTRY_POINT:
            raise ValueError(f"{ENTRY_POINT} is reserved for the program")
        contents[path] = text
    staged: list[StagedFile] = []
    try:
        for path, text in contents.items():
            # Lone surrogates pass through as bytes; the program then fails typed, not the launcher.
            data = text.encode(errors="surrogatepass")
            staged.append(StagedFile(memory_file(str(path), data), path))
        yield staged
    finally:
        for file in staged:
            os.close(file.fd)


def scratch_relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"file name {name!r} must be relative and stay inside the scratch dir")
    return path


def memory_file(name: str, data: bytes) -> int:
    """A memory file holding `data`, read from the start; the caller closes it."""
    fd = os.memfd_create(name)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd
