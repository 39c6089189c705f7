"""Sliding windows over a picture: their layout, the embeddings of their crops,
and the score maps and boxes built from per-window scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import UsageError
from .model import ClipModel

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, x1 and y1 exclusive

# Cells along the picture's shorter side. Windows of one to six cells cover
# objects from about an eighth to three quarters of that side.
DEFAULT_GRID = 8
DEFAULT_WINDOW_SIZES: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
# Detection also slides windows of 7 and 8 cells. Its map averages the
# window sizes, and without a window around an object that spans most of
# the shorter side, that object's average stays below any candidate.
DEFAULT_DETECT_WINDOW_SIZES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
DEFAULT_STRIDE = 1

# Crops per forward pass. At the 224 px input of ViT-B models a batch of 64
# is about 40 MB of float32 pixels.
DEFAULT_BATCH_SIZE = 64

# Map values per cell side after upsampling; sub-cell box edges come from
# bilinear interpolation between cell centres.
UPSAMPLING = 8

# Lower bound of per-size map values before their logarithms are averaged,
# so that one size scoring zero on a cell does not erase every other size.
_GEOMETRIC_FLOOR = 1e-3


@dataclass(frozen=True)
class WindowSettings:
    """Layout of the sliding windows, in grid cells.

    Cells are nearly square: `grid` of them span the picture's shorter side
    and as many as fit span the longer one.
    """

    grid: int = DEFAULT_GRID
    window_sizes: tuple[int, ...] = DEFAULT_WINDOW_SIZES  # window sides, in cells
    stride: int = DEFAULT_STRIDE  # step between neighbouring windows, in cells

    def __post_init__(self) -> None:
        object.__setattr__(self, "window_sizes", tuple(sorted({int(size) for size in self.window_sizes})))
        if self.grid < 1:
            raise UsageError(f"grid of {self.grid} cells is invalid; use 1 or more cells")
        if not self.window_sizes:
            raise UsageError("no window sizes given; pass at least one size in cells, for example 1,2,3")
        if self.window_sizes[0] < 1:
            raise UsageError(f"window size {self.window_sizes[0]} is invalid; sizes are in cells, 1 or more")
        if self.window_sizes[-1] > self.grid:
            raise UsageError(
                f"window of {self.window_sizes[-1]} cells is larger than the picture's shorter side "
                f"of {self.grid} cells; use window sizes up to the grid size"
            )
        if self.stride < 1:
            raise UsageError(f"stride of {self.stride} cells is invalid; use 1 or more cells")

    def grid_shape(self, width: int, height: int) -> tuple[int, int]:
        """Return (rows, columns) of cells for a picture of this size in pixels."""
        cell = min(width, height) / self.grid
        if width <= height:
            return max(self.grid, round(height / cell)), self.grid
        return self.grid, max(self.grid, round(width / cell))

    def count_windows(self, width: int, height: int) -> int:
        """Return the number of window crops for a picture of this size in pixels."""
        rows, columns = self.grid_shape(width, height)
        return sum(
            len(_window_starts(rows, size, self.stride)) * len(_window_starts(columns, size, self.stride))
            for size in self.window_sizes
        )


@dataclass(frozen=True)
class WindowLayout:
    """Window positions on one picture, in cells and in pixels."""

    size: tuple[int, int]  # picture (width, height) in pixels
    rows: int
    columns: int
    cells: np.ndarray  # (n, 4) int: row0, column0, row1, column1, ends exclusive
    sizes: np.ndarray  # (n,) int: window side in cells
    boxes: np.ndarray  # (n, 4) int: x0, y0, x1, y1 in pixels


def layout_windows(size: tuple[int, int], settings: WindowSettings) -> WindowLayout:
    """Place every window of `settings` on a picture of `size` (width, height) pixels.

    Raises:
        UsageError: the picture has fewer pixels than cells along a side.
    """
    width, height = size
    if min(width, height) < 1:
        raise UsageError(f"picture of {width}x{height} pixels is empty; give a picture with at least one pixel")
    if min(width, height) < settings.grid:
        raise UsageError(
            f"picture of {width}x{height} pixels is smaller than the grid of {settings.grid} cells "
            f"along its shorter side; use a grid of at most {min(width, height)} cells"
        )
    rows, columns = settings.grid_shape(width, height)
    x_edges = np.rint(np.linspace(0, width, columns + 1)).astype(int)
    y_edges = np.rint(np.linspace(0, height, rows + 1)).astype(int)

    cells, sizes = [], []
    for side in settings.window_sizes:
        for row in _window_starts(rows, side, settings.stride):
            for column in _window_starts(columns, side, settings.stride):
                cells.append((row, column, row + side, column + side))
                sizes.append(side)
    cell_array = np.array(cells, dtype=int)
    boxes = np.stack(
        [x_edges[cell_array[:, 1]], y_edges[cell_array[:, 0]], x_edges[cell_array[:, 3]], y_edges[cell_array[:, 2]]],
        axis=1,
    )
    return WindowLayout(size=size, rows=rows, columns=columns, cells=cell_array, sizes=np.array(sizes), boxes=boxes)


def embed_crops(model: ClipModel, image: Image.Image, boxes: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Embed the crop of every box, `batch_size` crops per forward pass, as (n, dimension) rows."""
    # Crops are resized to the model input anyway, so a large photo is first
    # shrunk until its smallest crop is no larger than that input: resizing
    # one picture once is cheaper than shrinking every crop from full size.
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    smallest = float(np.min(np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
    scale = min(1.0, model.preprocessing.shortest_edge / max(smallest, 1.0))
    if scale < 1.0:
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
            resample=Image.Resampling.BICUBIC,
            reducing_gap=2.0,
        )
        boxes = boxes * scale

    rows = []
    for start in range(0, len(boxes), batch_size):
        crops = [image.crop(tuple(int(round(value)) for value in box)) for box in boxes[start : start + batch_size]]
        rows.append(model.embed_pixels(np.stack([model.preprocess(crop) for crop in crops])))
    return np.concatenate(rows)


def crop_padded(image: Image.Image, box: Box) -> Image.Image:
    """Return the crop of `box`, with any part outside the picture filled with the median colour of its border."""
    x0, y0, x1, y1 = box
    if x0 >= 0 and y0 >= 0 and x1 <= image.width and y1 <= image.height:
        return image.crop(box)
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    fill = tuple(int(value) for value in np.median(border, axis=0))
    canvas = Image.new("RGB", (x1 - x0, y1 - y0), fill)
    canvas.paste(image, (-x0, -y0))
    return canvas


def coverage_map(layout: WindowLayout, probabilities: np.ndarray) -> np.ndarray:
    """Return, for each cell, the share of the windows' weight that covers it, as a (rows, columns) float32 map.

    A window's weight is the probability that it shows the query, divided by
    its area in cells. A model that matches a window only when it contains
    the whole object matches it wherever the object lies inside it. So the
    cells inside the object are covered by nearly all the weight, and cells
    further out by less. Dividing by the area keeps the many large windows
    from outweighing the few tight ones.
    """
    weights = np.asarray(probabilities, dtype=np.float64) / layout.sizes.astype(np.float64) ** 2
    covered = np.zeros((layout.rows, layout.columns))
    for (row0, column0, row1, column1), weight in zip(layout.cells, weights):
        covered[row0:row1, column0:column1] += weight
    return (covered / max(float(weights.sum()), 1e-12)).astype(np.float32)


def size_maps(layout: WindowLayout, scores: np.ndarray) -> np.ndarray:
    """Average window scores onto the cells each window covers, separately per window size.

    `scores` is (n,) or (n, k) for k queries; the result is (k, sizes, rows, columns).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(len(layout.sizes), -1)
    sides = np.unique(layout.sizes)
    maps = np.zeros((scores.shape[1], len(sides), layout.rows, layout.columns))
    for index, side in enumerate(sides):
        hits = np.zeros((layout.rows, layout.columns))
        chosen = layout.sizes == side
        for (row0, column0, row1, column1), score in zip(layout.cells[chosen], scores[chosen]):
            maps[:, index, row0:row1, column0:column1] += score[:, None, None]
            hits[row0:row1, column0:column1] += 1
        maps[:, index] /= hits
    return maps


def combine_sizes(maps: np.ndarray) -> np.ndarray:
    """Combine per-size maps (k, sizes, rows, columns) into one (k, rows, columns) float32 map each.

    Each size's map is first stretched to [0, 1], because raw similarities
    have no common scale across window sizes. The geometric mean then keeps
    only cells that windows of every size support: a large window also
    scores high on the background around a small object, but the small
    windows there do not.
    """
    low = maps.min(axis=(2, 3), keepdims=True)
    high = maps.max(axis=(2, 3), keepdims=True)
    maps = (maps - low) / np.maximum(high - low, 1e-12)
    logarithms = np.log(np.clip(maps, _GEOMETRIC_FLOOR, None))
    return np.exp(logarithms.mean(axis=1)).astype(np.float32)


def upsample(heatmap: np.ndarray) -> np.ndarray:
    """Interpolate a cell map bilinearly to `UPSAMPLING` values per cell side."""
    rows, columns = heatmap.shape
    image = Image.fromarray(np.ascontiguousarray(heatmap, dtype=np.float32), mode="F")
    return np.array(image.resize((columns * UPSAMPLING, rows * UPSAMPLING), Image.Resampling.BILINEAR))


def peak_region(fine: np.ndarray, threshold: float, floor: float) -> np.ndarray:
    """Return the mask of the connected region (4-neighbours) around the map's peak.

    A value joins the region when it reaches `floor + threshold * (peak - floor)`.
    """
    peak = np.unravel_index(int(np.argmax(fine)), fine.shape)
    inside = fine >= floor + threshold * (float(fine[peak]) - floor)
    region = np.zeros_like(inside)
    region[peak] = True
    # Grow by one step in each direction until nothing changes; maps are at
    # most a few hundred values a side, so this takes milliseconds.
    while True:
        grown = region.copy()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= inside
        if np.array_equal(grown, region):
            return region
        region = grown


def region_box(region: np.ndarray, size: tuple[int, int]) -> Box:
    """Return the pixel box around a region of an upsampled map, clipped to the picture."""
    width, height = size
    rows = np.flatnonzero(region.any(axis=1))
    columns = np.flatnonzero(region.any(axis=0))
    scale_x = width / region.shape[1]
    scale_y = height / region.shape[0]
    x0 = int(np.floor(columns[0] * scale_x))
    y0 = int(np.floor(rows[0] * scale_y))
    x1 = int(np.ceil((columns[-1] + 1) * scale_x))
    y1 = int(np.ceil((rows[-1] + 1) * scale_y))
    return (max(0, x0), max(0, y0), min(width, x1), min(height, y1))


def square_around(box: Box, size: tuple[int, int]) -> Box:
    """Return the square box around `box`, moved inside the picture and clipped to it.

    CLIP preprocessing crops its input to a square, so a square crop keeps
    all of an elongated box in view instead of cutting off its ends.
    """
    width, height = size
    x0, y0, x1, y1 = box
    side = min(max(x1 - x0, y1 - y0), width, height)
    left = min(max((x0 + x1 - side) // 2, 0), width - side)
    top = min(max((y0 + y1 - side) // 2, 0), height - side)
    return (left, top, left + side, top + side)


def box_iou(first: Box, second: Box) -> float:
    """Return the intersection over union of two boxes."""
    width = min(first[2], second[2]) - max(first[0], second[0])
    height = min(first[3], second[3]) - max(first[1], second[1])
    if width <= 0 or height <= 0:
        return 0.0
    intersection = width * height
    return intersection / (_area(first) + _area(second) - intersection)


def _window_starts(cells: int, side: int, stride: int) -> list[int]:
    # The last window is pinned to the far edge so that windows of every size
    # cover every cell, even when the stride does not divide evenly.
    starts = list(range(0, cells - side + 1, stride))
    if starts[-1] != cells - side:
        starts.append(cells - side)
    return starts


def _area(box: Box) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])
