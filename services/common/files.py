"""Files a setting names, read at start or on reload (a key, a CA, a JSON description).

Such a file is small and regular. Anything else put there by mistake is refused at once with a
reason, never waited on or read without end: a FIFO (opening it for reading waits for a writer
forever), a device such as /dev/zero (it never ends), a directory, a file far larger than its kind.
The reasons say what the file is, never what it holds.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

from nacl.signing import SigningKey

from services.common.identity import Identity, unb64
from services.common.tx import ACCOUNT

KEY_FILE_LIMIT = 64 << 10  # an Identity.save file is about 100 bytes


class FileRefused(OSError):
    """A file that is not what its setting needs; the message is the reason ("is not a regular file")."""


def open_regular(path: Path, *, follow: bool = True) -> int:
    """A blocking descriptor of ``path``, checked once open to be a regular file. It is opened
    non-blocking, so a FIFO cannot hold the caller until a writer comes. ``follow=False`` refuses a
    symbolic link as the last part (OSError ELOOP). The OSError of a missing or unreadable file is
    the caller's to report."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileRefused("is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes (a larger one is refused
    after reading ``limit + 1`` bytes, never read whole)."""
    with os.fdopen(open_regular(path), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileRefused(f"is larger than {_size(limit)}")
    return data


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n >> 10} KiB" if n % 1024 == 0 else f"{n} bytes"


def reason(exc: OSError) -> str:
    """What is wrong with a file, from the OSError that reading it raised, without its path or bytes."""
    if isinstance(exc, FileRefused):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "does not exist"
    return f"cannot be read ({type(exc).__name__})"


def load_identity(path: Path) -> Identity:
    """The key in ``path`` (Identity.save's format), or FileRefused saying what is wrong with the
    file: missing, unreadable, not a regular file, too large, or not a key file. The messages of
    json and nacl, which may quote the file, are not passed on."""
    try:
        data = read_regular(path, KEY_FILE_LIMIT)
    except OSError as exc:
        raise FileRefused(reason(exc)) from None
    try:
        raw = json.loads(data)
        account, key = raw["account"], SigningKey(unb64(raw["secret_key"]))
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise FileRefused(f"is not a key file ({type(exc).__name__})") from None
    if not isinstance(account, str) or not ACCOUNT.fullmatch(account):  # a caller may name it in a message
        raise FileRefused("is not a key file (its account is not an account id)")
    return Identity(account, key)


def warn_if_world_readable(path: Path, setting: str, log: logging.Logger) -> None:
    """A key file every user of the host can read is warned about, not refused: a bind-mounted
    secret may need it (the images run as uid 10001)."""
    try:
        mode = path.stat().st_mode
    except OSError:  # gone since it was read: the next start says so
        return
    if mode & 0o004:
        log.warning("%s: %s is readable by every user of this host (mode %o)", setting, path, mode & 0o777)
