"""What an image folder holds: its classes, its image files, and a fingerprint of their content.

``Config.key()`` includes the fingerprint of an ``imagefolder:`` dataset, and :mod:`bnprivacy.data`
decodes the files listed here. This module imports nothing from the package, so both can use it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def class_folders(split_dir: Path) -> list[str]:
    """The class folders of one split, sorted; at least two, with UTF-8 names. A class folder that
    cannot be reached (a dangling symbolic link, such as one into an unmounted disk, or a link
    loop) is an error naming it, never a class silently left out; plain files are not classes."""
    entries = [p for p in _listed(split_dir, "imagefolder split") if not p.name.startswith(".")]
    unreachable = [p for p in entries if p.is_symlink() and not p.exists()]
    if unreachable:
        raise ValueError(f"class folder {str(unreachable[0])!r} is a symbolic link whose target cannot be reached "
                         f"(dangling, or a loop){_and_more(unreachable)}; mount the disk it points to, or "
                         "remove the link, so that no class is left out")
    folders = [p for p in entries if p.is_dir()]
    for folder in folders:
        _require_utf8_name(folder, "class folder")
    classes = sorted(folder.name for folder in folders)
    if len(classes) < 2:
        raise ValueError(
            f"imagefolder split {str(split_dir)!r} has {len(classes)} class folder(s) "
            f"({classes}); a classification dataset needs at least two, one folder per class"
        )
    return classes


def image_files(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """``(path, label)`` of every image of one split, in class then name order."""
    files = []
    for label, name in enumerate(classes):
        found = sorted(p for p in _listed(split_dir / name, "class folder")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())  # not a folder named x.png
        if not found:
            raise ValueError(
                f"class folder {str(split_dir / name)!r} holds no images "
                f"(looked for {', '.join(IMAGE_SUFFIXES)})"
            )
        for path in found:
            _require_utf8_name(path, "image")
        files.extend((path, label) for path in found)
    return files


def _listed(folder: Path, what: str) -> list[Path]:
    """The entries of ``folder``; one that cannot be listed is a ValueError naming it and why."""
    try:
        return list(folder.iterdir())
    except OSError as error:
        raise ValueError(f"{what} {str(folder)!r} cannot be listed ({os.strerror(error.errno) if error.errno else error}); "
                         "check that it exists, is a folder and that you may read it") from None


def _and_more(paths: list[Path]) -> str:
    return f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""


def _require_utf8_name(path: Path, what: str) -> None:
    """Refuse, naming it, a file whose name is not UTF-8 (bytes in another system's encoding):
    names go into the fingerprint, result keys and reports as UTF-8 text."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {os.fsencode(path)!r} has a name that is not valid UTF-8; "
                         "rename it to a UTF-8 name") from None


# Fingerprints by resolved root, for this process: hashing 60,000 files takes seconds, and a
# process works on the images it loaded. load_imagefolder refreshes the entry on every load.
_FINGERPRINTS: dict[str, str] = {}


def imagefolder_fingerprint(root: Path | str) -> str:
    """A 16-hex-digit digest of an image folder's content: every image's path under ``root``, class
    and the SHA-256 of its bytes. ``Config.key()`` includes it, so changing (even with its size and
    modification time restored), adding or removing an image gives new results instead of stale
    ones. Hashing reads every image; the result is remembered for this process."""
    root = Path(root).expanduser()
    known = _FINGERPRINTS.get(str(root.resolve()))
    if known:
        return known
    files = []
    for split in ("train", "test"):
        folder = root / split
        if folder.is_dir():  # load_imagefolder explains a missing split
            files += image_files(folder, class_folders(folder))
    return remember_fingerprint(root, files)


def remember_fingerprint(root: Path, files: list[tuple[Path, int]]) -> str:
    """The fingerprint of ``files`` under ``root``, remembered for this process."""
    # v3: the files' bytes, since size and modification time can be restored after an edit in place
    digest = hashlib.sha256(b"imagefolder v3\n")
    for path, label in files:
        digest.update(f"{path.relative_to(root)}|{label}|{_file_sha256(path)}\n".encode())
    _FINGERPRINTS[str(root.resolve())] = fingerprint = digest.hexdigest()[:16]
    return fingerprint


def _file_sha256(path: Path) -> str:
    # One unbuffered read of the whole file: images are small and decoding holds them whole anyway,
    # and over 60,000 small files this is faster than hashlib.file_digest's 256 KiB chunks.
    with open(path, "rb", buffering=0) as handle:
        return hashlib.sha256(handle.read()).hexdigest()
