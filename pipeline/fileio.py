"""Output paths and atomic writes.

Every output is written to a temporary file in the destination directory and renamed into
place, so an interrupted or failed run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import glob
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import TOOL_NAME
from .errors import PipelineError

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str) -> str:
    """A directory name that cannot escape `build/` or surprise a shell."""
    cleaned = _UNSAFE.sub("_", name).strip("._-")
    return cleaned or "model"


def check_writable(path: Path, *, option: str = "--out") -> Path:
    """Prove `path` can be written before any expensive work starts, leaving nothing behind:
    directories made for the probe are removed again, so a run that fails later leaves no trace."""
    created = []
    try:
        probe = path
        while not probe.exists() and probe != probe.parent:
            created.append(probe)
            probe = probe.parent
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        raise PipelineError(f"cannot write the output directory: {output_error(exc, path).problem[len('cannot write: '):]}",
                            path=path, field=option,
                            fix=f"choose a writable directory with {option}") from None
    finally:
        for made in created:  # deepest first
            try:
                made.rmdir()
            except OSError:
                break
    return path


def checked_input(path: Path, *, option: str, max_bytes: int | None, kind: str = "file",
                  error=PipelineError, fix: str | None = None, allow_dir: bool = False) -> int:
    """A file the user gave us, before it is opened: it exists (a symlink loop is named as
    such), it is a regular file (a FIFO or a device would block or never end), and it is not
    larger than `max_bytes` (None: the reader bounds what it takes). `allow_dir`: a folder is
    accepted too (an image folder, a SavedModel). Returns its size."""
    import stat as stat_module

    try:
        info = path.stat()
    except FileNotFoundError:
        raise error("no such file", path=path, field=option, fix=fix) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error("is a symlink loop (too many levels of symbolic links)", path=path, field=option,
                        fix="point the option at the real file") from None
        raise error(f"cannot read: {exc.strerror or exc}", path=path, field=option, fix=fix) from None
    if stat_module.S_ISDIR(info.st_mode):
        if allow_dir:
            return info.st_size
        raise error(f"is a directory, not a {kind}", path=path, field=option, fix=fix)
    if not stat_module.S_ISREG(info.st_mode):
        raise error(f"is not a regular file (a FIFO, socket or device): not a {kind}", path=path, field=option,
                    fix=fix or f"pass a {kind} saved on disk")
    if max_bytes is not None and info.st_size > max_bytes:
        raise error(f"is {info.st_size} bytes, more than the {max_bytes >> 20} MiB a {kind} may have here",
                    path=path, field=option, fix=fix or f"pass a {kind} under {max_bytes >> 20} MiB")
    return info.st_size


def read_small_text(path: Path, max_bytes: int) -> str | None:
    """A file the tool wrote earlier (a record, a report), or None when it is missing, is not a
    regular file (a FIFO would block), is too large or cannot be read: the caller treats it as
    absent and writes it anew."""
    import stat as stat_module

    try:
        info = path.stat()
        if not stat_module.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            log.warning("ignoring %s: not a regular file of at most %d bytes", path, max_bytes)
            return None
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("ignoring unreadable %s (%s)", path, exc.strerror or exc)
        return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(path: Path) -> Path:
    """mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual umask modes."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())
    return path


def output_error(exc: OSError, path: Path, option: str = "--out") -> PipelineError:
    """A failed write as the user's problem to fix (a full disk, a read-only or foreign folder),
    naming the folder, instead of a traceback."""
    reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.ENAMETOOLONG: "the name is too long for the file system",
               errno.EISDIR: "a folder stands where a file is written", errno.ENOTDIR: "a file stands where a folder is",
               errno.EFBIG: "the file is too large for the file system (or a file-size limit)"}
    reason = reasons.get(exc.errno, exc.strerror or str(exc))
    fix = ("free space there, or set TMPDIR to a folder with room" if option == "TMPDIR"
           else f"free space, or choose a writable folder with {option}")
    return PipelineError(f"cannot write: {reason}", path=exc.filename or path, field=option, fix=fix)


@contextlib.contextmanager
def os_errors(path: Path, option: str = "--out") -> Iterator[None]:
    """File-system failures inside the block (a full disk, a read-only folder, a name too long,
    a folder where a file should be) become one clear error naming the path."""
    try:
        yield
    except OSError as exc:
        raise output_error(exc, path, option) from None


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A private temporary folder (in $TMPDIR) for what a worker process reads and writes,
    removed afterwards. A full or read-only TMPDIR, found while writing there, is the user's to
    fix and says so, instead of a traceback from deep inside numpy's savez."""
    import tempfile

    where = Path(tempfile.gettempdir())
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            try:
                yield Path(tmp)
            except OSError as exc:
                if exc.errno in _NO_ROOM and (exc.filename is None or str(exc.filename).startswith(tmp)):
                    raise output_error(exc, where, "TMPDIR") from None
                raise
    except OSError as exc:  # making or removing the folder itself
        if exc.errno in _NO_ROOM or exc.errno in (errno.EACCES, errno.EPERM):
            raise output_error(exc, where, "TMPDIR") from None
        raise


def _clear_orphaned_temps(path: Path) -> None:
    """Temporary files of earlier writes of `path` whose process died between writing and
    renaming (SIGKILL, power loss): their names carry the writer's pid."""
    for tmp in path.parent.glob(f".{glob.escape(path.name[:64])}.*.tmp"):
        m = re.fullmatch(rf"\.{re.escape(path.name[:64])}\.(\d+)\.[^.]+\.tmp", tmp.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive_number(int(m.group(1))):
            tmp.unlink(missing_ok=True)


def _pid_alive_number(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clear_orphaned_temps(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:64]}.{os.getpid()}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        public_mode(Path(tmp))
        os.replace(tmp, path)
    except OSError as exc:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise output_error(exc, path) from None
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# --- folders the tool owns and replaces as a whole (firmware/, edgetpu/) ----------------------
#
# A tool may only replace what it made. Each such folder carries a manifest of the files the
# tool wrote; a folder without one is the user's and is never replaced. Files a user added to
# an owned folder (a build directory, notes) are carried over into the new folder, never
# deleted. The swap is one atomic rename (Linux renameat2 RENAME_EXCHANGE); where that is not
# available, two renames, and the next run restores the previous folder if it was interrupted
# between them. Only files named in a manifest are ever deleted.

MANIFEST = ".edge-deploy-manifest.json"
_STAGING, _OLD = "staging", "old"


def staging_dir(final: Path) -> Path:
    """A hidden sibling of `final` to write the new folder into; its name carries our pid so a
    concurrent run's recovery leaves it alone while we live."""
    parent = final.parent
    with os_errors(final):
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{final.name}.{_STAGING}-{os.getpid()}-", dir=parent))


def write_manifest(folder: Path, generator: str) -> None:
    """Record every file under `folder` as made by the tool (call when the folder is complete)."""
    files = sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file() and f.name != MANIFEST)
    (folder / MANIFEST).write_text(json.dumps({"generated_by": f"{generator}, do not edit: this folder is "
                                               "replaced as a whole when it is generated again",
                                               "files": files}, indent=1) + "\n")


def owned_files(folder: Path, legacy: Callable[[Path], set[str] | None] | None = None) -> set[str] | None:
    """The files under `folder` the tool made (relative paths), or None when the folder is not
    the tool's. `legacy` recognises folders written before manifests existed."""
    try:
        record = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return legacy(folder) if legacy else None
    except (OSError, ValueError):
        return None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return {f for f in files if _is_inside(f)} | {MANIFEST}


def _is_inside(rel: str) -> bool:
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts


def _foreign_roots(folder: Path, owned: set[str]) -> list[str]:
    """The smallest set of paths under `folder` holding everything the tool did not make: a
    directory with no owned file below it counts as one entry."""
    owned_dirs = {str(p) for f in owned for p in Path(f).parents if str(p) != "."}
    roots = []

    def walk(d: Path) -> None:
        for entry in sorted(d.iterdir()):
            rel = str(entry.relative_to(folder))
            if entry.is_dir() and not entry.is_symlink() and rel in owned_dirs:
                walk(entry)
            elif rel not in owned or entry.is_dir() or entry.is_symlink():
                roots.append(rel)

    walk(folder)
    return roots


def ensure_replaceable(final: Path, *, option: str = "--out",
                       legacy: Callable[[Path], set[str] | None] | None = None) -> None:
    """Refuse, before any work, a destination the tool may not replace: a file, a symlink, or a
    non-empty folder it did not make."""
    with os_errors(final, option):
        _ensure_replaceable(final, option, legacy)


def _ensure_replaceable(final: Path, option: str, legacy) -> None:
    recover_interrupted(final, legacy)
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise PipelineError("exists and is not a folder: it would be replaced", path=final, field=option,
                            fix=f"pass a new or empty folder to {option}")
    if not final.is_dir():
        return
    try:
        empty = not any(final.iterdir())
    except OSError as exc:
        raise PipelineError(f"cannot read the folder: {exc.strerror or exc}", path=final, field=option,
                            fix=f"pass a readable folder to {option}") from None
    if not empty and owned_files(final, legacy) is None:
        raise PipelineError(f"is a folder edge-deploy did not make (no {MANIFEST}); it would be replaced "
                            "as a whole", path=final, field=option,
                            fix=f"pass a new or empty folder to {option}")


def _keep_unchanged_times(staging: Path, final: Path, owned: set[str]) -> None:
    """A file the tool writes again with the same bytes keeps its time: a build of the folder
    (make and ninja go by time) then recompiles only what changed, e.g. arena.cc alone when a
    measured arena is written back, not the whole application."""
    for rel in owned - {MANIFEST}:
        old, new = final / rel, staging / rel
        try:
            if (old.is_file() and not old.is_symlink() and new.is_file() and not new.is_symlink()
                    and filecmp.cmp(old, new, shallow=False)):
                st = old.stat()
                os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError:  # an unreadable old file: the new one keeps its own time
            continue


def replace_owned_dir(staging: Path, final: Path, *, option: str = "--out",
                      legacy: Callable[[Path], set[str] | None] | None = None) -> None:
    """Swap a complete staging folder in for `final`. Files in `final` the tool did not make
    move into the new folder; a name clash with a new file is refused before anything moves."""
    public_mode(staging)
    ensure_replaceable(final, option=option, legacy=legacy)
    if not final.exists():
        staging.rename(final)
        return
    owned = owned_files(final, legacy) or {MANIFEST}
    foreign = _foreign_roots(final, owned)
    clashes = [rel for rel in foreign if (staging / rel).exists() or (staging / rel).is_symlink()]
    if clashes:
        raise PipelineError(f"holds {', '.join(clashes[:3])} that edge-deploy did not write, and the new "
                            "project has a file of that name", path=final, field=option,
                            fix="move those files out of the folder, or pass a new folder")
    _keep_unchanged_times(staging, final, owned)
    old = _swap(staging, final)
    _settle(old, final, legacy)


@contextlib.contextmanager
def replacing_owned_dir(final: Path, generator: str, *, option: str = "--out",
                        legacy: Callable[[Path], set[str] | None] | None = None) -> Iterator[Path]:
    """Write the new folder into the yielded staging folder; when the block ends normally it
    gets its manifest and replaces `final`, otherwise it is removed and `final` is untouched."""
    staging = staging_dir(final)
    try:
        with os_errors(final, option):
            yield staging
            write_manifest(staging, generator)
            replace_owned_dir(staging, final, option=option, legacy=legacy)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap(staging: Path, final: Path) -> Path:
    """Exchange the two folders; returns where the previous folder now is."""
    if _rename_exchange(staging, final):
        old = staging.with_name(staging.name.replace(f".{_STAGING}-", f".{_OLD}-", 1))
        staging.rename(old)  # the previous folder, now at the staging name
        return old
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.{_OLD}-{os.getpid()}-", dir=final.parent))
    old.rmdir()
    final.rename(old)  # interrupted here: the next run restores `old` (recover_interrupted)
    staging.rename(final)
    return old


def _settle(old: Path, final: Path, legacy) -> None:
    """Carry the user's files from the previous folder into the new one, then delete only what
    the tool made."""
    owned = owned_files(old, legacy) or {MANIFEST}
    for rel in _foreign_roots(old, owned):
        target = final / rel
        if target.exists() or target.is_symlink():
            continue  # a clash appeared meanwhile: keep it where it is, never overwrite
        target.parent.mkdir(parents=True, exist_ok=True)
        (old / rel).rename(target)
    _discard(old, owned)


def _discard(folder: Path, owned: set[str]) -> None:
    """Delete the files the tool made and the folders left empty; anything else stays."""
    for rel in owned:
        f = folder / rel
        if f.is_file() and not f.is_symlink():
            f.unlink()
    for d in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()),
                    key=lambda p: -len(p.parts)):
        try:
            d.rmdir()
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        log.warning("left %s in place: it holds files edge-deploy did not write", folder)


def _pid_alive(name: str) -> bool:
    m = re.search(rf"\.(?:{_STAGING}|{_OLD})-(\d+)-", name)
    if not m:
        return False
    if int(m.group(1)) == os.getpid():
        return True  # this process's own folder, still in use
    return _pid_alive_number(int(m.group(1)))


def recover_interrupted(final: Path, legacy: Callable[[Path], set[str] | None] | None = None) -> None:
    """Finish what an interrupted run left: restore the previous folder when the swap stopped
    half-way, and clear staging and old folders of runs that are no longer alive."""
    parent = final.parent
    if not parent.is_dir():
        return
    leftovers = sorted(p for p in parent.glob(f".{glob.escape(final.name)}.*-*")
                       if p.is_dir() and re.match(rf"\.{re.escape(final.name)}\.(?:{_STAGING}|{_OLD})-", p.name)
                       and not _pid_alive(p.name))
    for left in leftovers:
        owned = owned_files(left, legacy)
        if owned is None:
            continue  # not a folder we finished writing: nothing in it is ours to judge
        if not final.exists() and f".{_OLD}-" in left.name:
            left.rename(final)  # the swap was interrupted after the old folder moved aside
            log.warning("restored %s from an interrupted run", final)
        elif final.is_dir():
            _settle(left, final, legacy)
        else:
            _discard(left, owned)
    for left in leftovers:  # staging folders that never got a manifest: only our own renders
        if left.is_dir() and f".{_STAGING}-" in left.name and owned_files(left, legacy) is None:
            shutil.rmtree(left, ignore_errors=True)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 RENAME_EXCHANGE); False where the system
    or the file system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


# --- the output folder build/<name>/ ---------------------------------------------------------

# Written into build/<name>/ before the first output: the folder is the tool's from then on,
# also when that first run is interrupted before its report exists.
OUTPUT_MARKER = ".edge-deploy"
REPORT_JSON = "report.json"


def is_pipeline_output(folder: Path) -> bool:
    """A folder this tool writes reports into: marked by it, or holding a report.json it wrote
    (folders from before the marker). A user's folder beside their model is never written to."""
    if (folder / OUTPUT_MARKER).is_file():
        return True
    text = read_small_text(folder / REPORT_JSON, 64 << 20)
    try:
        report = json.loads(text) if text is not None else None
    except (ValueError, RecursionError):
        return False
    return isinstance(report, dict) and str(report.get("generated_by", "")).startswith(TOOL_NAME)


def check_output_folder(folder: Path, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that exists, holds files and is not the
    tool's: its model_*.tflite and report files would be overwritten."""
    with os_errors(folder, option):
        return _check_output_folder(folder, option)


def _check_output_folder(folder: Path, option: str) -> Path:
    if folder.is_dir() and not folder.is_symlink() and any(folder.iterdir()) and not is_pipeline_output(folder):
        raise PipelineError(f"exists, holds files and was not made by {TOOL_NAME} (no {OUTPUT_MARKER} or "
                            f"{REPORT_JSON} of ours): its files would be overwritten", path=folder, field=option,
                            fix=f"choose another --name or {option}, or an empty folder")
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise PipelineError("exists and is not a folder", path=folder, field=option,
                            fix=f"choose another --name or {option}")
    return check_writable(folder, option=option)


def mark_output_folder(folder: Path) -> None:
    with os_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
    if not (folder / OUTPUT_MARKER).is_file():
        write_text_atomic(folder / OUTPUT_MARKER, f"generated by {TOOL_NAME}: this folder holds its outputs and is "
                                                  "rewritten by it\n")
