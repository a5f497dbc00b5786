"""Output folders that are never half-written and never lie over an input.

Everything is written to a hidden temporary folder beside the output (``.<name>.tmp-<pid>-<random>``,
:class:`AtomicFolder`) and moved into place with ``os.replace`` at the end, so an error, Ctrl-C or
SIGTERM never leaves a half-written output folder; one left by a killed process (its pid no longer
runs) is removed by the next write to the same output. An output given as a symbolic link stays a
link: the folder it points to is replaced. :func:`check_output_folder` and
:func:`check_output_overlap` refuse, before any work, an output that cannot be written or that is,
holds or lies inside an input.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import ACATError, ConfigError
from .file_checks import display_path


# ----------------------------------------------------------------------------------- folders
def _real_target(out: Path) -> Path:
    """The folder really written: the target of ``out`` when ``out`` is a symbolic link."""
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def check_output_folder(out, overwrite: bool = False) -> Path:
    """Raise unless ``out`` can be written, before any work: a folder that exists and is not empty
    needs ``overwrite``; a path below a file, in a folder that cannot be written, or with a name too
    long for the file system is refused."""
    out = Path(out)
    shown = display_path(out)
    try:
        return _check_output_folder(out, shown, overwrite)
    except OSError as exc:                 # a name too long, a loop of links, no permission to look
        raise ACATError(f"cannot use output folder {shown} ({exc.strerror or exc})") from None


def _check_output_folder(out: Path, shown: str, overwrite: bool) -> Path:
    for part in Path(os.path.abspath(out)).parts:
        if len(os.fsencode(part)) > 255:
            raise ACATError(f"cannot create output folder {shown}: the name {display_path(part)[:40]}... is longer "
                            "than the file system allows (255 bytes)")
    target = _real_target(out)
    if target.exists() and not target.is_dir():
        raise ACATError(f"output {shown} exists and is a file; give a folder path for --out")
    non_empty = target.is_dir() and any(os.scandir(target))
    if non_empty and not overwrite:
        raise ACATError(f"output folder {shown} already exists and is not empty; "
                        "use --overwrite (overwrite=True) to replace it, or choose another folder")
    absolute = Path(os.path.abspath(target))
    existing = absolute
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ACATError(f"cannot create output folder {shown}: {display_path(existing)} is a file, not a folder")
    limit = _name_max(existing)
    for part in absolute.parts[len(existing.parts):] + ((absolute.name,) if absolute == existing else ()):
        if len(os.fsencode(part)) > limit:
            raise ACATError(f"cannot create output folder {shown}: the name {display_path(part)[:40]}... is longer "
                            f"than the file system allows ({limit} bytes)")
    if len(os.fsencode(absolute.name)) + 40 > limit:
        raise ACATError(f"cannot create output folder {shown}: its name is too long "
                        f"(at most {limit - 40} bytes, to leave room for the temporary folder beside it)")
    probe_in = absolute.parent if absolute.parent.is_dir() else existing
    try:
        probe = tempfile.mkdtemp(prefix=".acat-probe-", dir=probe_in)
        os.rmdir(probe)
    except OSError as exc:
        raise ACATError(f"cannot create output folder {shown}: {display_path(probe_in)} is not writable "
                        f"({exc.strerror or exc})") from None
    return out


def check_output_overlap(out, inputs) -> None:
    """Refuse (:class:`ConfigError`) an output folder that is, contains or lies inside any input
    (a file, a DICOM folder, a batch folder, a datalist or one of its entries): writing it with
    ``overwrite`` would otherwise delete the input. Symbolic links are followed."""
    real_out = Path(os.path.realpath(out))
    for inp in inputs:
        if not isinstance(inp, (str, os.PathLike)):
            continue
        try:
            real_in = Path(os.path.realpath(inp))
        except (OSError, ValueError):
            continue
        what = None
        if real_out == real_in:
            what = "is the input"
        elif real_out in real_in.parents:
            what = "contains the input"
        elif real_in in real_out.parents:
            what = "lies inside the input"
        if what:
            raise ConfigError(f"the output folder {display_path(out)} {what} {display_path(inp)}; choose another --out "
                              "(the input is never modified)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temporaries(target) -> list:
    """Remove ``.<name>.tmp-<pid>-*`` folders beside ``target`` left by ACAT processes that no longer
    run (killed while writing); a stale ``.<name>.old-<pid>-*`` is put back when ``target`` is gone,
    else removed. Returns what was removed or restored."""
    target = Path(target)
    parent = target.parent
    done = []
    if not parent.is_dir():
        return done
    name = re.escape(os.fsencode(target.name).decode("utf-8", "surrogateescape"))
    pattern = re.compile(rf"^\.{name}\.(tmp|old)-(\d+)-")
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return done
    for e in sorted(entries, key=lambda e: e.name):
        m = pattern.match(e.name)
        if not m or int(m.group(2)) == os.getpid() or _alive(int(m.group(2))):
            continue
        try:
            if not e.is_dir(follow_symlinks=False):
                continue
            if m.group(1) == "old" and not os.path.lexists(target):
                os.replace(e.path, target)
            else:
                shutil.rmtree(e.path)
            done.append(e.path)
        except OSError:
            pass
    return done


class AtomicFolder:
    """Write into a temporary sibling folder; on success replace ``target`` with it, else delete it.

    Use as ``with AtomicFolder(out, overwrite) as tmp: ...write into tmp...``. A ``target`` that is a
    symbolic link stays one (the folder it points to is replaced); temporaries of killed earlier runs
    are cleaned first (:func:`remove_stale_temporaries`).
    """

    def __init__(self, target, overwrite: bool = False):
        self.link = Path(target)
        self.target = _real_target(Path(target))
        self.overwrite = overwrite
        self.tmp = None

    def __enter__(self) -> Path:
        check_output_folder(self.link, self.overwrite)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.target)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-{os.getpid()}-", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:              # includes KeyboardInterrupt
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        try:
            if self.target.exists():
                check_output_folder(self.link, self.overwrite)   # someone may have written meanwhile
                old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-{os.getpid()}-",
                                            dir=self.target.parent))
                os.replace(self.target, old)
            os.replace(self.tmp, self.target)
        except BaseException:
            if old is not None and not self.target.exists():
                os.replace(old, self.target)
            shutil.rmtree(self.tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def atomic_write_text(path, text: str) -> Path:
    """Write a text file through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
