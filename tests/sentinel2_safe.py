"""Sentinel-2 products in their download layout (SAFE), cut from the real sample pair.

A real L1C product is 600-800 MB, so the tests build small ones from ``sample_data/s2_pair``
(real Sentinel-2 digital numbers, stacked on the 10 m grid): each band goes back to its native
resolution (block mean over 2 x 2 px for the 20 m bands, 6 x 6 px for the 60 m ones) into its
own JPEG 2000 file (lossless) under ``GRANULE/<granule>/IMG_DATA``, with the product metadata
(``MTD_MSIL1C.xml``: processing baseline, NODATA value, ``RADIO_ADD_OFFSET``) the reader uses.
From processing baseline 04.00 on, ESA adds 1000 to every digital number and records the
offset -1000; ``baseline="05.09"`` does the same to the sample's numbers.

Pure numpy + stdlib: the caller passes ``write_band(path, array, transform, crs_wkt)``, array
``(rows, cols)`` or ``(bands, rows, cols)``: :func:`write_jp2_rasterio` in the library tests and
benchmarks, one on osgeo.gdal in the QGIS tests (whose Python has no rasterio).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
RESOLUTION_M = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
                "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20}  # fmt: skip
NEW_DN_OFFSET = 1000  # what processing baseline 04.00 adds to every L1C digital number

# A cloud mask for products of the 198 x 198 px sample (60 m px of its 33 x 33): an opaque
# cloud, a cirrus and a snow patch. The sample scene is clear, so this one mask is made up.
S2_CLOUD_MASK = np.zeros((3, 33, 33), np.uint8)
S2_CLOUD_MASK[0, 2:8, 3:10] = 1  # opaque clouds
S2_CLOUD_MASK[1, 20:25, 20:30] = 1  # cirrus
S2_CLOUD_MASK[2, 12:16, 0:5] = 1  # snow and ice: not a cloud, not masked

WriteBand = Callable[[Path, np.ndarray, tuple[float, ...], str], None]


def native_band(stack: np.ndarray, band: str) -> np.ndarray:
    """Band ``band`` of a 13-band 10 m stack, block-averaged to its native resolution."""
    factor = RESOLUTION_M[band] // 10
    data = stack[BANDS.index(band)].astype(np.float64)
    rows, cols = data.shape[0] // factor, data.shape[1] // factor
    blocks = data[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint16)


def _metadata_xml(level: str, baseline: str, offset: int) -> str:
    offsets_tag = "RADIO_ADD_OFFSET" if level == "L1C" else "BOA_ADD_OFFSET"
    offsets = "".join(
        f'<{offsets_tag} band_id="{i}">{offset}</{offsets_tag}>' for i in range(len(BANDS))
    )
    offsets_list = (
        f"<Radiometric_Offset_List>{offsets}</Radiometric_Offset_List>"
        if level == "L1C"
        else f"<BOA_ADD_OFFSET_VALUES_LIST>{offsets}</BOA_ADD_OFFSET_VALUES_LIST>"
    )
    spectral = "".join(
        f'<Spectral_Information bandId="{i}" physicalBand="{b.replace("B0", "B")}">'
        f"<RESOLUTION>{RESOLUTION_M[b]}</RESOLUTION></Spectral_Information>"
        for i, b in enumerate(BANDS)
    )
    product = "Level-1C" if level == "L1C" else "Level-2A"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<n1:{product}_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/'
        f'User_Product_{product}.xsd"><n1:General_Info><Product_Info>'
        f"<PROCESSING_LEVEL>{product}</PROCESSING_LEVEL>"
        f"<PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE></Product_Info>"
        "<Product_Image_Characteristics><Special_Values><SPECIAL_VALUE_TEXT>NODATA"
        "</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>"
        "<Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>"
        "<SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>"
        '<QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>'
        + (offsets_list if baseline >= "04.00" else "")
        + f"<Spectral_Information_List>{spectral}</Spectral_Information_List>"
        f"</Product_Image_Characteristics></n1:General_Info></n1:{product}_User_Product>\n"
    )


def write_safe(
    folder: Path,
    stack: np.ndarray,
    transform: tuple[float, ...],
    crs_wkt: str,
    write_band: WriteBand,
    *,
    date: str = "20150820",
    baseline: str = "02.04",
    level: str = "L1C",
    cloud_mask: np.ndarray | None = None,
) -> Path:
    """Write a SAFE product of ``stack`` (13 bands, uint16, 10 m grid ``transform``) into
    ``folder``; returns the ``.SAFE`` path. The stack is cut to a multiple of 6 px.

    ``level="L2A"``: no B10, files ``R10m/..._B02_10m.jp2`` etc., and B02 also at 20 m (as in a
    real L2A product, which holds every band at each coarser resolution too).

    ``cloud_mask``: uint8 ``(3, rows / 6, cols / 6)`` on the 60 m grid (opaque clouds, cirrus,
    snow; 1 = flagged), written as ``QI_DATA/MSK_CLASSI_B00.jp2`` as products of baseline 04.00
    and later carry it.
    """
    rows, cols = (s // 6 * 6 for s in stack.shape[1:])
    stack = stack[:, :rows, :cols]
    offset = NEW_DN_OFFSET if baseline >= "04.00" else 0
    tile = "T11SPV"
    product = f"S2A_MSI{level}_{date}T183301_N{baseline.replace('.', '')}_R027_{tile}"
    safe = folder / f"{product}_{date}T220000.SAFE"
    granule = safe / "GRANULE" / f"{level}_{tile}_A001000_{date}T183301"
    x0, dx, rx, y0, ry, dy = transform
    for band in BANDS:
        if level == "L2A" and band == "B10":
            continue
        data = native_band(stack, band)
        data = np.where(data > 0, data + offset, 0).astype(np.uint16)
        factor = RESOLUTION_M[band] // 10
        band_transform = (x0, dx * factor, rx, y0, ry, dy * factor)
        if level == "L1C":
            path = granule / "IMG_DATA" / f"{tile}_{date}T183301_{band}.jp2"
        else:
            res = RESOLUTION_M[band]
            path = granule / "IMG_DATA" / f"R{res}m" / f"{tile}_{date}T183301_{band}_{res}m.jp2"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_band(path, data, band_transform, crs_wkt)
    if level == "L2A":  # B02 resampled to 20 m as well: the reader must take the 10 m file
        coarse = native_band(stack, "B02")[::2, ::2] + offset
        path = granule / "IMG_DATA" / "R20m" / f"{tile}_{date}T183301_B02_20m.jp2"
        write_band(path, coarse.astype(np.uint16), (x0, dx * 2, rx, y0, ry, dy * 2), crs_wkt)
    # baseline 04.00 products carry per-band quality masks named like bands: not image data
    decoy = granule / "QI_DATA" / "MSK_DETFOO_B01.jp2"
    decoy.parent.mkdir(parents=True, exist_ok=True)
    write_band(decoy, np.ones((rows // 6, cols // 6), np.uint16), (x0, dx * 6, rx, y0, ry, dy * 6),
               crs_wkt)  # fmt: skip
    if cloud_mask is not None:
        write_band(granule / "QI_DATA" / "MSK_CLASSI_B00.jp2", cloud_mask.astype(np.uint8),
                   (x0, dx * 6, rx, y0, ry, dy * 6), crs_wkt)  # fmt: skip
    name = "MTD_MSIL1C.xml" if level == "L1C" else "MTD_MSIL2A.xml"
    (safe / name).write_text(_metadata_xml(level, baseline, -offset))
    return safe


def zip_product(product: Path) -> Path:
    """``product`` (a ``.SAFE`` folder) zipped beside it as Copernicus Data Space serves it:
    ``<name>.zip`` holding ``<name>.SAFE/...``, stored."""
    archive = product.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for file in sorted(product.rglob("*")):
            zf.write(file, file.relative_to(product.parent).as_posix())
    return archive


def write_jp2_rasterio(
    path: Path, data: np.ndarray, transform: tuple[float, ...], crs_wkt: str
) -> None:
    """``(rows, cols)`` or ``(bands, rows, cols)`` as a lossless JPEG 2000 (rasterio, imported
    here so that the QGIS tests can use this module without it)."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    data = data if data.ndim == 3 else data[None]
    with rasterio.open(
        path, "w", driver="JP2OpenJPEG", width=data.shape[2], height=data.shape[1],
        count=data.shape[0], dtype=data.dtype, crs=CRS.from_wkt(crs_wkt),
        transform=Affine.from_gdal(*transform), QUALITY=100, REVERSIBLE="YES",
    ) as dst:  # fmt: skip
        dst.write(data)
