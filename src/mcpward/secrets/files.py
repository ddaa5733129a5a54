"""Reading one secret from a file (`file:PATH`, the Vault token file) with the checks a secret deserves."""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_SECRET_FILE = 64 * 1024


class SecretFileError(Exception):
    """Why a secret file cannot be used; the message names the path and never shows content."""


def read_secret_file(path: Path, *, allow_world_readable: bool = False) -> str:
    """The file's text less one trailing newline.

    Refused: anything but a regular file (a FIFO would hang the gateway, a device never ends),
    a file anyone on the machine may write (its value could be swapped), a world-readable file
    unless the operator accepts it (container secret mounts are often 0644), more than 64 KiB,
    text that is not UTF-8, and an empty value.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise SecretFileError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        # fstat of the descriptor we read from: checking the name first and opening it after
        # would let someone swap the file in between.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretFileError(f"{path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & stat.S_IWOTH:
            raise SecretFileError(f"{path} is writable by every user (mode {mode:04o}); chmod o-w it")
        if mode & stat.S_IROTH and not allow_world_readable:
            raise SecretFileError(f"{path} is readable by every user (mode {mode:04o}); chmod 600 it, or set "
                                  "secrets.allow_world_readable = true if the mount cannot be changed")
        if info.st_size > MAX_SECRET_FILE:
            raise SecretFileError(f"{path} is larger than {MAX_SECRET_FILE // 1024} KiB")
        os.set_blocking(fd, True)
        data = _read_bounded(fd, MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise SecretFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_FILE:  # it grew after fstat
        raise SecretFileError(f"{path} is larger than {MAX_SECRET_FILE // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretFileError(f"{path} is not UTF-8 text") from None
    text = strip_one_newline(text)
    if not text:
        raise SecretFileError(f"{path} is empty")
    return text


def strip_one_newline(text: str) -> str:
    """`echo value > file` and `printf 'value\\n' |` add one newline that is not part of the secret."""
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _read_bounded(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total < limit:
        chunk = os.read(fd, min(65536, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)
