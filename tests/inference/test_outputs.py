"""All-or-nothing outputs: what a job refuses to write, and what it leaves when it fails."""

from __future__ import annotations

import shutil

import pytest

from swimdiff_geo.inference.change import ChangeOptions, ChangeOutputs, detect_change
from swimdiff_geo.inference.errors import OutputError
from swimdiff_geo.inference.landcover import LandcoverOptions, LandcoverOutputs, map_landcover


def test_an_output_on_an_input_is_refused_even_with_overwrite(landsat_pair, landsat_change_model,
                                                              landsat_segmentation_model,
                                                              tmp_path):  # fmt: skip
    """QGIS always passes overwrite (it asked the user already), so an output path picked on an
    input would have replaced the image being read: refused, the input untouched."""
    a = shutil.copy(landsat_pair[0], tmp_path / "a.tif")
    before = (tmp_path / "a.tif").read_bytes()
    outputs = ChangeOutputs(probability=str(a), mask=str(tmp_path / "mask.tif"))
    options = ChangeOptions(model=str(landsat_change_model), overwrite=True)
    with pytest.raises(OutputError, match=rf"{a}: is an input of this job \({a}\)"):
        detect_change(str(a), str(landsat_pair[1]), outputs, options)
    classes = LandcoverOutputs(landcover=str(tmp_path / "." / "a.tif"))
    with pytest.raises(OutputError, match="is an input of this job"):
        map_landcover(str(a), classes, LandcoverOptions(model=str(landsat_segmentation_model),
                                                        overwrite=True))  # fmt: skip
    assert (tmp_path / "a.tif").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]


def test_two_outputs_on_one_file_are_refused(landsat_pair, landsat_change_model, tmp_path):
    """x.tif and x.tiff would share the style x.qml (one raster opening with the other's)."""
    outputs = ChangeOutputs(probability=str(tmp_path / "same.tiff"),
                            mask=str(tmp_path / "same.tif"))  # fmt: skip
    with pytest.raises(OutputError, match="same.qml: two outputs would be written to this one"):
        detect_change(*map(str, landsat_pair), outputs,
                      ChangeOptions(model=str(landsat_change_model)))  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_an_output_folder_that_cannot_be_made_leaves_no_temporary_folder(
    landsat_pair, landsat_change_model, tmp_path
):
    """The mask's folder cannot be created (its parent is a file): the probability's folder,
    already given its temporary folder, is left as it was."""
    writable = tmp_path / "rw"
    writable.mkdir()
    (tmp_path / "file.txt").write_text("a file, not a folder")
    outputs = ChangeOutputs(probability=str(writable / "p.tif"),
                            mask=str(tmp_path / "file.txt" / "sub" / "m.tif"))  # fmt: skip
    with pytest.raises(OutputError, match="cannot create output folder"):
        detect_change(*map(str, landsat_pair), outputs,
                      ChangeOptions(model=str(landsat_change_model)))  # fmt: skip
    assert list(writable.iterdir()) == []
