"""Jobs in one process reuse a loaded model while its file is unchanged."""

from __future__ import annotations

import os
import shutil

from swimdiff_geo.inference.jobs import cached_model

KINDS = ("change_detection",)


def test_an_unchanged_model_is_loaded_once_and_a_changed_one_again(landsat_change_model, tmp_path):
    path = str(tmp_path / "model.onnx")
    shutil.copy(landsat_change_model, path)
    first = cached_model(path, "cpu", 1, KINDS)
    assert cached_model(path, "cpu", 1, KINDS) is first
    assert cached_model(path, "cpu", 2, KINDS) is not first  # other session options
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    again = cached_model(path, "cpu", 1, KINDS)
    assert again is not first and again.contract == first.contract
