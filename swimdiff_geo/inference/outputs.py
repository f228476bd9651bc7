"""All-or-nothing output writing: temporary names first, renamed into place only when complete."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import OutputError
from .io import archive_of

# Temporary folders are named TEMP_PREFIX + host + "-" + PID + "-" + random, so that a later run
# can tell the folders of a process that was killed outright (SIGKILL, a power cut) and remove
# them; a process that ends any other way removes its own.
TEMP_PREFIX = ".swimdiff-tmp-"


class OutputTransaction:
    """Hands out temporary paths for a set of final output paths and commits them together.

    Temporary files live in a hidden folder inside each output's folder (same filesystem, so the
    final rename is atomic per file). On :meth:`rollback` the temporary folders go, and so do
    output folders this transaction created. Use as a context manager: an exception rolls back.

    ``stale``: outputs an earlier run into the same layout may have left that this run does not
    write (the polygons of a run now made without them): they count as existing outputs, and
    the commit removes them, so a folder never mixes two runs. A replaced output's GDAL
    ``.aux.xml`` (statistics QGIS cached for the old pixels) goes with it.

    ``inputs``: the files the job reads. An output path that is one of them, or two outputs on
    one path, are refused before anything is written (with overwrite, the input would be lost).
    """

    def __init__(
        self,
        final_paths: Iterable[str],
        overwrite: bool = False,
        stale: Iterable[str] = (),
        inputs: Iterable[str] = (),
    ) -> None:
        self.final_paths = [os.path.abspath(p) for p in final_paths]
        self.stale = [os.path.abspath(p) for p in stale]
        self.inputs = list(inputs)
        self.overwrite = overwrite
        self._tmp_dirs: dict[str, str] = {}
        self._created_dirs: list[str] = []
        self._temp_of: dict[str, str] = {}
        self._committed = False

    def __enter__(self) -> OutputTransaction:
        _refuse_clashes(self.final_paths, self.inputs)
        existing = [p for p in self.final_paths + self.stale if os.path.exists(p)]
        if existing and not self.overwrite:
            raise OutputError(
                f"{existing[0]}: output already exists"
                + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
                + "; pass --overwrite (in Python: overwrite=True) to replace"
            )
        try:  # __exit__ does not run when __enter__ raises: undo the folders made so far here
            for final in self.final_paths:
                folder = os.path.dirname(final)
                if folder not in self._tmp_dirs:
                    self._make_folder(folder)
                    remove_abandoned_temp_dirs(folder)
                    try:
                        prefix = f"{TEMP_PREFIX}{socket.gethostname()}-{os.getpid()}-"
                        self._tmp_dirs[folder] = tempfile.mkdtemp(prefix=prefix, dir=folder)
                    except OSError as exc:
                        raise OutputError(f"{folder}: cannot write outputs here: {exc}") from exc
                name = os.path.basename(final)
                self._temp_of[final] = os.path.join(self._tmp_dirs[folder], name)
        except BaseException:
            self.rollback()
            raise
        return self

    def _make_folder(self, folder: str) -> None:
        missing = []
        path = Path(folder)
        while not path.exists():
            missing.append(str(path))
            path = path.parent
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot create output folder: {exc}") from exc
        self._created_dirs.extend(reversed(missing))

    def temp(self, final_path: str) -> str:
        """The temporary path to write ``final_path`` under."""
        return self._temp_of[os.path.abspath(final_path)]

    def scratch(self, name: str) -> str:
        """A scratch file path inside the first temporary folder (removed at the end)."""
        return os.path.join(next(iter(self._tmp_dirs.values())), name)

    def commit(self) -> None:
        """Rename every temporary file to its final name, then remove the temporary folders."""
        try:
            for final in self.final_paths:
                tmp = self._temp_of[final]
                if not os.path.exists(tmp):
                    raise OutputError(f"{final}: internal error, output was never written")
                if os.path.isdir(final):
                    shutil.rmtree(final)
                _remove(final + ".aux.xml")  # the old pixels' statistics, if GDAL cached any
                os.replace(tmp, final)
                # GDAL sidecars (.aux.xml with category names, .qml styles) follow their file.
                for sidecar in (tmp + ".aux.xml",):
                    if os.path.exists(sidecar):
                        os.replace(sidecar, final + sidecar[len(tmp) :])
            for path in self.stale:
                _remove(path)
                _remove(path + ".aux.xml")
        except OSError as exc:
            raise OutputError(f"cannot move outputs into place: {exc}") from exc
        self._committed = True
        self._remove_tmp_dirs()

    def rollback(self) -> None:
        self._remove_tmp_dirs()
        if not self._committed:
            for folder in reversed(self._created_dirs):
                shutil.rmtree(folder, ignore_errors=True)
            self._created_dirs.clear()

    def _remove_tmp_dirs(self) -> None:
        for tmp in self._tmp_dirs.values():
            shutil.rmtree(tmp, ignore_errors=True)
        self._tmp_dirs.clear()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._committed:
            self.rollback()


def _refuse_clashes(outputs: list[str], inputs: list[str]) -> None:
    """OutputError for two outputs on one path, or an output on an input's file."""
    seen: dict[str, str] = {}
    for path in outputs:
        key = os.path.normcase(os.path.realpath(path))
        if key in seen:
            raise OutputError(
                f"{path}: two outputs would be written to this one file (a raster's .qml style "
                "is named after it without its extension, so x.tif and x.tiff share x.qml): "
                "give the outputs distinct names"
            )
        seen[key] = path
    for source in inputs:
        local = archive_of(source) or source
        if local.startswith("/vsi") or not os.path.exists(local):
            continue  # a remote or missing input: nothing on this disk to overwrite
        key = os.path.normcase(os.path.realpath(local))
        if key in seen:
            raise OutputError(
                f"{seen[key]}: is an input of this job ({source}); writing there would destroy "
                "it: give the output another path"
            )


def _remove(path: str) -> None:
    """Remove file or folder ``path`` if it exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def remove_abandoned_temp_dirs(folder: str) -> list[str]:
    """Remove the temporary folders in ``folder`` that this host made for a process that no
    longer runs; returns their names. Folders of other hosts (a shared disk) and of running
    processes stay, and so does everything where processes cannot be checked (not POSIX)."""
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    host, removed = socket.gethostname(), []
    for name in names:
        parts = name[len(TEMP_PREFIX) :].rsplit("-", 2) if name.startswith(TEMP_PREFIX) else []
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if _process_runs(int(parts[1])):
            continue
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        removed.append(name)
    return removed


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
