"""Refuse a damaged weights file before the model is built: every zip member's CRC-32 is checked.

`torch.load`, `torch.jit.load` and `torch.export.load` read zip members without checking their CRC-32,
so bytes flipped inside a tensor's storage (an object store, a copy or an initializer gone wrong) load
silently and serve wrong values. The zip's directory records each member's CRC-32: reading every member
to its end makes `zipfile` compare them. Members are streamed in chunks, so no second copy of the
weights is ever in memory; an archive stored inside the file (pt2 keeps torch.save archives) is
opened in place and checked the same way.
"""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..common import logger
from ..errors import DamagedWeights

CHUNK = 1024 * 1024
_ZIP_MAGIC = b"PK\x03\x04"
MAX_NESTING = 2  # the file, and archives stored inside it


@dataclass(frozen=True)
class Checked:
    """What one check read: members (nested ones included), bytes, and the time it took."""

    members: int
    nbytes: int
    seconds: float


def check_weights(path: Path) -> Checked | None:
    """Check every member of the zip archive at `path`; None when it is not a zip (nothing to check).

    A mismatch is `DamagedWeights` naming the file and the member, and saying to upload again.
    """
    if not zipfile.is_zipfile(path):
        return None  # torch.save's legacy (pre-1.6) format carries no checksums
    started = time.monotonic()
    try:
        with path.open("rb") as handle:
            members, nbytes = _check_archive(handle, str(path), 1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        raise DamagedWeights(
            f"the weights file {path} ({path.stat().st_size} bytes) is damaged: {err}. The copy is corrupt: compare it with the file "
            "in the model store and upload the model again (mlflow.pytorch.log_model / save_model). "
            "To load it anyway from a store you trust, set verify_weights: false."
        ) from err
    checked = Checked(members, nbytes, time.monotonic() - started)
    logger.info(
        "checked the CRC-32 of %d member(s) of %s (%.1f MB) in %.3fs",
        checked.members,
        path,
        checked.nbytes / 1e6,
        checked.seconds,
    )
    return checked


class _Damaged(zipfile.BadZipFile):
    """A member failed its check; the message names it (the innermost one, for a nested archive)."""


def _check_archive(handle: IO[bytes], where: str, depth: int) -> tuple[int, int]:
    members = nbytes = 0
    with zipfile.ZipFile(handle) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            name = f"{where}:{info.filename}" if depth > 1 else info.filename
            try:
                members += _check_member(archive, info, name, depth)
            except _Damaged:
                raise
            except zipfile.BadZipFile as err:  # zipfile compares the CRC-32 when a member reaches its end
                raise _Damaged(f"member {name!r} fails its CRC-32 check ({err})") from err
            nbytes += info.file_size
    return members, nbytes


def _check_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, depth: int) -> int:
    """Reads the member to its end (so that zipfile checks it); returns the members checked."""
    checked = 1
    with archive.open(info) as member:
        head = member.read(len(_ZIP_MAGIC))
        if depth < MAX_NESTING and head == _ZIP_MAGIC and info.compress_type == zipfile.ZIP_STORED:
            # Opened in place (a member is seekable): its own members are checked too.
            inner, _ = _check_archive(member, name, depth + 1)  # type: ignore[arg-type]
            checked += inner
            member.seek(0)
        while member.read(CHUNK):
            pass
    return checked
