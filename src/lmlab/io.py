"""Writing files safely: everything lmlab writes appears whole or not at all, and only where lmlab may write.

Files are written under a temporary name in the target's folder, flushed to
disk (fsync), then renamed over the target: a rename within one file system
is atomic (POSIX `rename(2)`), so a reader, or the next run after a crash,
finds the old file or the new one, never a mix.

A folder (a checkpoint, a tokenizer, a report) is assembled in a staging
folder beside it and then swapped in by three renames: the old folder to a
backup name, the staging folder to the final name, and only then the backup is
removed. Whenever the process dies, the final folder or its backup is a
complete copy; :func:`recover` (called before every replace, and by a training
run when it starts) puts an orphaned backup back and removes the staging
folders a killed save left behind. The same write-then-rename discipline is
what databases call shadow paging (Lorie 1977); `git` and `rsync` replace
files the same way.

Ownership: every folder lmlab creates carries a marker file, `.lmlab.json`
(kind, lmlab version, creation time). lmlab writes into or replaces an output
folder only if it is new, empty, or carries the marker of a compatible kind;
anything else is refused with the reason, even with --overwrite, so a mistyped
--out never costs a user's files. Temporary names are `.NAME.lmlab-...`, and a
temporary folder is only removed if it carries the marker (or holds nothing
but lmlab's temporary files), so lmlab never removes what it cannot prove it
wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError, first_line

MARKER = ".lmlab.json"
MARKER_FORMAT = "lmlab.output"
TEMP_TAG = ".lmlab-"  # every temporary name lmlab makes holds this: .NAME.lmlab-tmp-*, -new-*, -old
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.lmlab-(?P<role>tmp|new|old)(-[0-9a-z]+)?$")
MODEL_KIND = "model"  # an lmlab checkpoint folder (plain or quantized)
HF_MODEL_KIND = "hf-model"  # a Hugging Face folder lmlab exported
GGUF_MODEL_KIND = "gguf-model"  # a GGUF file and Ollama Modelfile lmlab exported
KIND_GROUPS = (frozenset({MODEL_KIND, HF_MODEL_KIND, GGUF_MODEL_KIND}),)  # kinds that may replace one another
PAUSE_ENV = "LMLAB_IO_PAUSE"  # seconds to sleep between the steps of a save; the crash tests widen the windows


# -- files ------------------------------------------------------------------------------------------------


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(temporary path)` and rename the result onto `path` (the folder must exist).

    For writers that want a path (safetensors' `save_file`, matplotlib's `savefig`): the temporary name
    keeps no suffix of `path`, so tell such a writer the format explicitly."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TEMP_TAG}tmp-{uuid.uuid4().hex[:12]}")
    try:
        write(tmp)
        _fsync_file(tmp)
        _pause()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """JSON with non-finite floats written as null (JSON has no NaN or Infinity), ending in a new line."""
    return write_text(path, json.dumps(finite_json(data), indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[Any]) -> Path:
    """One JSON document per line (non-finite floats as null)."""
    return write_text(path, "".join(json_line(record) for record in records))


def json_line(record: Any) -> str:
    """`record` as one line of JSON Lines (https://jsonlines.org), non-finite floats written as null."""
    return json.dumps(finite_json(record), ensure_ascii=False) + "\n"


def read_json(path: str | Path, fmt: str | None = None, what: str = "") -> dict[str, Any]:
    """A JSON file holding one object (lmlab's own files: manifests, run and sweep records, configs), or one line
    of LmlabError: unreadable, not valid JSON, not an object, or (given `fmt`) not {"format": fmt, ...}, in
    which case the message says the file is not `what`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LmlabError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise LmlabError(f"cannot read {path} ({first_line(err)})") from None
    if not isinstance(data, dict):
        raise LmlabError(f"{path}: expected a JSON object")
    if fmt is not None and data.get("format") != fmt:
        raise LmlabError(f"{path}: not {what}")
    return data


def finite_json(value: Any) -> Any:
    """`value` with every NaN and ±Infinity replaced by None, so that `json.dumps` writes valid JSON (null)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def save_safetensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write torch tensors as a safetensors file, atomically."""
    from safetensors.torch import save_file

    return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata or {"format": "pt"}))


def read_safetensors(path: str | Path) -> dict[str, Any]:
    """The torch tensors of a safetensors file, or one clear error if it cannot be read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise LmlabError(f"{path} is not a readable safetensors file ({err})") from None


def save_figure(figure: Any, path: str | Path, **savefig: Any) -> Path:
    """Write a matplotlib figure atomically, in the format the file name's suffix names (.png by default)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    try:
        return write_atomic(path, lambda tmp: figure.savefig(tmp, format=fmt, **savefig))
    except OSError as err:
        raise LmlabError(f"cannot write the plot to {path}: {err.strerror}") from None


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the renames inside `folder` durable (a directory's entries live in the directory's own inode)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def _pause() -> None:
    seconds = os.environ.get(PAUSE_ENV)
    if seconds:
        time.sleep(float(seconds))


# -- the marker and the claim rule ------------------------------------------------------------------------


def write_marker(folder: str | Path, kind: str) -> Path:
    """Mark `folder` as an lmlab output of `kind` (e.g. "model", "training-run", "tokenizer")."""
    try:
        version = metadata.version("lmlab")
    except metadata.PackageNotFoundError:
        version = "unknown"
    record = {"format": MARKER_FORMAT, "kind": kind, "version": version,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return write_json(Path(folder) / MARKER, record)


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """The marker of an lmlab output folder, or None if `folder` has none (or an unreadable one)."""
    try:
        record = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == MARKER_FORMAT else None


def compatible(kind: str, other: str) -> bool:
    return kind == other or any(kind in group and other in group for group in KIND_GROUPS)


def claim_folder(out: str | Path, kind: str, overwrite: bool = False) -> bool:
    """Check that lmlab may write the output folder `out` as a `kind`; True if it exists and would be replaced.

    The rule: a new or empty folder is always taken; a folder carrying lmlab's
    marker of a compatible kind is replaced only with `overwrite`; anything
    else (a user's folder, another kind of output, the current folder or one
    holding it) is refused with the reason, whatever `overwrite` says."""
    out = Path(out)
    where = Path(os.path.abspath(out))
    if Path.cwd() == where or where in Path.cwd().parents:
        raise LmlabError(f"--out {out} is the current folder or holds it; choose a new folder for the output")
    if out.is_symlink():
        raise LmlabError(f"{out} is a symbolic link; give the folder it points to, or a new folder")
    if out.exists() and not out.is_dir():
        raise LmlabError(f"{out} exists and is not a folder; choose a new folder for the output")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    marker = read_marker(out)
    if marker is None:
        names = sorted(entry.name for entry in out.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise LmlabError(f"{out} is not empty ({shown}) and was not written by lmlab (it has no {MARKER}); lmlab "
                         "only replaces folders it wrote, even with --overwrite: choose a new or empty folder")
    if not compatible(kind, str(marker.get("kind"))):
        raise LmlabError(f"{out} holds an lmlab {marker.get('kind')}, not a {kind}; choose another folder")
    if not overwrite:
        raise LmlabError(f"{out} already holds an lmlab {marker.get('kind')}; choose another folder or allow "
                         "overwriting (--overwrite)")
    return True


def remove_folder(folder: str | Path) -> bool:
    """Remove `folder` if lmlab wrote it (it carries the marker); False, and nothing removed, otherwise."""
    folder = Path(folder)
    if not folder.is_dir() or read_marker(folder) is None:
        return False
    _remove_tree(folder)
    return True


def _remove_tree(folder: Path) -> None:
    """Remove a folder lmlab wrote, its marker last: a removal cut short by a kill leaves a folder that still
    carries the marker (or is empty), which the next :func:`recover` knows as lmlab's and finishes removing."""
    for entry in folder.iterdir():
        if entry.name == MARKER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (folder / MARKER).unlink(missing_ok=True)
    folder.rmdir()


# -- folders ------------------------------------------------------------------------------------------------


def backup_name(out: Path) -> Path:
    return out.with_name(f".{out.name}{TEMP_TAG}old")


def staging_name(out: Path, token: str | None = None) -> Path:
    """The staging folder of `out`; ranks that must agree on it pass the same `token`."""
    return out.with_name(f".{out.name}{TEMP_TAG}new-{token or uuid.uuid4().hex[:12]}")


def stage_folder(out: str | Path, kind: str, overwrite: bool = False, token: str | None = None) -> Path:
    """Claim `out` (see :func:`claim_folder`) and make its marked, empty staging folder; fill it, then
    :func:`commit_folder`. :func:`replace_folder` does all three."""
    out = Path(out)
    recover(out)
    claim_folder(out, kind, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_name(out, token)
    if staging.exists():
        _remove_tree(staging)
    staging.mkdir()
    write_marker(staging, kind)
    return staging


def commit_folder(staging: Path, out: str | Path) -> Path:
    """Swap the filled `staging` folder in as `out`: old -> backup, staging -> out, then remove the backup."""
    out = Path(out)
    for file in staging.rglob("*"):
        if file.is_file():
            _fsync_file(file)
    _pause()
    backup = backup_name(out)
    if out.exists():
        os.replace(out, backup)  # a crash from here to the next rename leaves the backup: recover() restores it
        _pause()
        os.replace(staging, out)
        _fsync_folder(out.parent)
        _pause()
        _remove_tree(backup)
    else:
        if out.is_dir():  # an empty folder the claim accepted
            out.rmdir()
        os.replace(staging, out)
    _fsync_folder(out.parent)
    return out


@contextmanager
def replace_folder(out: str | Path, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder for `out`; when the block ends it becomes `out`, or vanishes if the block fails."""
    staging = stage_folder(out, kind, overwrite)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit_folder(staging, out)


def recover(out: str | Path) -> list[Path]:
    """Finish or undo what a killed replace of `out` left: restore the backup if `out` is missing, else drop
    it; remove lmlab's own staging folders and temporary files of `out`. Returns what was removed."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    removed = []
    backup = backup_name(out)
    if backup.is_dir() and _is_own(backup):
        if out.exists():
            _remove_tree(backup)
            removed.append(backup)
        else:
            os.replace(backup, out)
    for entry in out.parent.glob(f".{glob_escape(out.name)}{TEMP_TAG}*"):
        match = _TEMPORARY.match(entry.name)
        if match and match["target"] == out.name and match["role"] != "old" and _remove_own(entry):
            removed.append(entry)
    return removed


def clean_leftovers(folder: str | Path) -> list[Path]:
    """:func:`recover` every target under `folder` that a killed save left temporary files or folders of
    (only lmlab's own: by name and marker). Returns what was removed."""
    folder = Path(folder)
    targets = set()
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            match = _TEMPORARY.match(name)
            if match:
                targets.add(Path(root) / match["target"])
    removed = []
    for target in sorted(targets):
        removed.extend(recover(target))
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _is_own(folder: Path) -> bool:
    """A temporary folder is lmlab's if it carries the marker or holds nothing but lmlab's temporary files
    (a save killed before its marker was in place)."""
    return read_marker(folder) is not None or all(TEMP_TAG in entry.name for entry in folder.iterdir())


def _remove_own(entry: Path) -> bool:
    if entry.is_symlink():
        return False
    if entry.is_dir():
        if not _is_own(entry):
            return False
        _remove_tree(entry)
    else:
        entry.unlink()
    return True
