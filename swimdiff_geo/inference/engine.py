"""The sliding-window engine: windows -> batches -> onnxruntime -> blended strips streamed out.

Memory stays bounded by a strip of rows, whatever the raster size: windows run in row-major
order, predictions are blended into a float32 accumulator that holds only the rows some future
window may still touch, and finished rows are handed to a consumer (which writes them) and
dropped. A reader thread reads and scales the next batch while onnxruntime runs the current one
(GDAL reads and onnxruntime both release the GIL).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .contract import LoadedModel, ModelContract
from .errors import CancelledError, InputError
from .io import Grid, RasterSource, Window
from .tiling import TileGrid, pad_to_tile

StripConsumer = Callable[[Window, np.ndarray, np.ndarray], None]
"""Called with (strip window, blended predictions (K, rows, cols) float32, valid (rows, cols))."""


def cropped_consumer(consumer: StripConsumer, inner: Window) -> StripConsumer:
    """A consumer of the strips of a run over a grown window
    (:func:`~.tiling.window_on_tile_lattice`) that passes on the part inside ``inner``, in
    ``inner``'s own pixel coordinates."""

    def consume(window: Window, pred: np.ndarray, valid: np.ndarray) -> None:
        top = max(window.row_off, inner.row_off)
        bottom = min(window.row_off + window.height, inner.row_off + inner.height)
        if bottom <= top:
            return
        rows = slice(top - window.row_off, bottom - window.row_off)
        cols = slice(inner.col_off - window.col_off, inner.col_off - window.col_off + inner.width)
        consumer(
            Window(0, top - inner.row_off, inner.width, bottom - top),
            np.ascontiguousarray(pred[:, rows, cols]),
            np.ascontiguousarray(valid[rows, cols]),
        )

    return consume


@dataclass
class DateInput:
    """One date of the model input: a source, its 1-based band indices in model order, and the
    offset (col, row) of the output grid's origin inside the source's grid."""

    source: RasterSource
    bands: list[int]
    offset: tuple[int, int] = (0, 0)


class StackedReader:
    """Reads one window of every date, stacks them along channels and scales them per the model.

    Returns float32 ``(D*C, h, w)`` model-ready values and a bool ``(h, w)`` mask that is False
    where any date is nodata (declared nodata, masks, outside a warped footprint, or, with
    ``nodata_policy == "declared_or_zero"``, all bands zero). Nodata pixels are set to 0 after
    scaling (the band mean when the model standardises), so they do not disturb neighbours.
    """

    def __init__(self, dates: Sequence[DateInput], contract: ModelContract) -> None:
        self.dates = list(dates)
        self.contract = contract

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        parts, valid = [], np.ones((window.height, window.width), dtype=bool)
        for date in self.dates:
            col, row = date.offset
            shifted = Window(
                window.col_off + col, window.row_off + row, window.width, window.height
            )
            data, ok = date.source.read(shifted, date.bands)
            valid &= ok
            if self.contract.nodata_policy == "declared_or_zero":
                valid &= np.any(data != 0, axis=0)
            parts.append(data)
        stacked = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        self.contract.scale(stacked)
        stacked[:, ~valid] = 0.0
        return stacked, valid


@dataclass
class _Batch:
    windows: list[Window]
    data: np.ndarray | None  # (n, D*C, T, T)
    valid: list[np.ndarray]
    safe_row: int  # rows above this are final once this batch is blended
    windows_done: int


class _StripAccumulator:
    """Weighted sums of predictions for the rows still open, as a growable strip buffer."""

    def __init__(self, channels: int, width: int, capacity: int) -> None:
        self.channels, self.width = channels, width
        self.top = 0
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        self.acc = np.zeros((self.channels, capacity, self.width), np.float32)
        self.wsum = np.zeros((capacity, self.width), np.float32)
        self.valid = np.zeros((capacity, self.width), bool)

    def _ensure(self, bottom: int) -> None:
        need = bottom - self.top
        if need > self.wsum.shape[0]:
            old = (self.acc, self.wsum, self.valid)
            n = old[1].shape[0]
            self._alloc(need)
            self.acc[:, :n], self.wsum[:n], self.valid[:n] = old

    def add(self, window: Window, pred: np.ndarray, weight: np.ndarray, valid: np.ndarray) -> None:
        self._ensure(window.row_off + window.height)
        rows = slice(window.row_off - self.top, window.row_off - self.top + window.height)
        cols = window.col_slice
        self.acc[:, rows, cols] += pred * weight
        self.wsum[rows, cols] += weight
        self.valid[rows, cols] |= valid

    def flush(self, until: int, consumer: StripConsumer) -> None:
        n = until - self.top
        if n <= 0:
            return
        wsum = self.wsum[:n]
        covered = wsum > 0
        out = self.acc[:, :n] / np.where(covered, wsum, 1.0)
        consumer(Window(0, self.top, self.width, n), out, self.valid[:n] & covered)
        # Shift the still-open rows to the top of the buffer and clear the rest.
        for arr in (self.acc[:], self.wsum, self.valid):
            if arr.ndim == 3:
                arr[:, : arr.shape[1] - n] = arr[:, n:]
                arr[:, arr.shape[1] - n :] = 0
            else:
                arr[: arr.shape[0] - n] = arr[n:]
                arr[arr.shape[0] - n :] = 0
        self.top = until


def _produce_batches(
    reader: StackedReader, tiles: TileGrid, batch_size: int, stop: threading.Event
):
    """Yield batches in row-major window order; all-nodata windows are skipped."""
    windows = list(tiles)
    tile = tiles.tile_size
    pending: list[tuple[Window, np.ndarray, np.ndarray]] = []
    for i, window in enumerate(windows):
        if stop.is_set():
            return
        data, valid = reader.read(window)
        if valid.any():
            pending.append((window, pad_to_tile(data, tile), valid))
        last = i + 1 == len(windows)
        row_ends = last or windows[i + 1].row_off != window.row_off
        if len(pending) == batch_size or last or (row_ends and not pending):
            safe_row = tiles.height if last else windows[i + 1].row_off
            yield _Batch(
                windows=[p[0] for p in pending],
                data=np.stack([p[1] for p in pending]) if pending else None,
                valid=[p[2] for p in pending],
                safe_row=safe_row,
                windows_done=i + 1,
            )
            pending = []


def _read_ahead(batches, depth: int, stop: threading.Event):
    """Run the ``batches`` generator in a thread, ``depth`` batches ahead of the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()

    def work() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        q.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as exc:  # handed to the consumer thread, re-raised there
            q.put(exc)

    thread = threading.Thread(target=work, name="swimdiff-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)


def run_sliding_window(
    model: LoadedModel,
    reader: StackedReader,
    grid: Grid,
    tile_size: int,
    overlap: int,
    batch_size: int,
    consumer: StripConsumer,
    out_channels: int,
    progress: Callable[[float], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    read_ahead: bool = True,
) -> int:
    """Run ``model`` over ``grid`` and stream blended predictions to ``consumer``.

    ``tile_size`` and ``overlap`` are in pixels. Returns the number of windows run through the
    model (all-nodata windows are skipped). Raises CancelledError when ``is_cancelled()`` turns
    true (checked between batches).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    tiles = TileGrid(grid.height, grid.width, tile_size, overlap)
    total = len(tiles)
    stop = threading.Event()
    batches = _produce_batches(reader, tiles, batch_size, stop)
    if read_ahead:
        batches = _read_ahead(batches, depth=2, stop=stop)
    # Enough rows for two window rows; grows if a batch spans more (narrow rasters).
    accumulator = _StripAccumulator(out_channels, grid.width, 2 * tiles.window_height)
    n_run = 0
    try:
        for batch in batches:
            if is_cancelled is not None and is_cancelled():
                raise CancelledError("cancelled by the user; partial outputs removed")
            if batch.data is not None:
                pred = model.run(batch.data)
                if pred.ndim != 4 or pred.shape[1] != out_channels:
                    raise InputError(
                        model.path,
                        f"model returned shape {tuple(pred.shape)} for a batch of "
                        f"{tuple(batch.data.shape)}; expected (N, {out_channels}, H, W)",
                    )
                for k, window in enumerate(batch.windows):
                    crop = pred[k, :, : window.height, : window.width]
                    accumulator.add(window, crop, tiles.weight(window), batch.valid[k])
                n_run += len(batch.windows)
            accumulator.flush(batch.safe_row, consumer)
            if progress is not None:
                progress(batch.windows_done / total)
    finally:
        stop.set()
        if hasattr(batches, "close"):
            batches.close()
    return n_run
