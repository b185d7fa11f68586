"""The X/Y/Z plot's grid: the cells' images in rows and columns, the axis values written beside them.

Labels are drawn with Pillow's default font (no font file is needed or shipped), black on a white
margin: the X values above the columns, the Y values left of the rows, and with a third axis one
such grid per Z value, side by side, each under its Z value. Cells whose images differ in size (a
width or height axis) get the largest size, the image in its top-left corner on white.
A cell that has no image (it failed under --on-error continue, or was skipped) stays grey.
"""

from __future__ import annotations

import numpy as np

WHITE, BLACK, MISSING_GREY = 255, 0, 128
LABEL_PADDING = 4  # pixels around a label's text
GRID_GAP = 16  # pixels between the grids of a Z axis
MIN_FONT_SIZE = 10


def draw_plot_grid(cells: dict[tuple[int, int, int], np.ndarray], shape: tuple[int, int, int],
                   labels: tuple[list[str], list[str], list[str]]) -> np.ndarray:
    """The plot as one uint8 [H, W, 3] image; `cells` maps (x, y, z) to that cell's image, `shape`
    is (columns, rows, grids), `labels` the X, Y and Z labels (empty for a missing axis)."""
    from PIL import Image, ImageDraw

    columns, rows, grids = shape
    cell_h = max(image.shape[0] for image in cells.values())
    cell_w = max(image.shape[1] for image in cells.values())
    font = _font(cell_w, cell_h)
    x_labels, y_labels, z_labels = labels
    line_h = _line_height(font)
    left = _left_margin(y_labels, font, cell_w)
    top = _lines_needed(x_labels, font, cell_w, line_h) * line_h + 2 * LABEL_PADDING if x_labels else 0
    title = _lines_needed(z_labels, font, left + columns * cell_w, line_h) * line_h + 2 * LABEL_PADDING if z_labels else 0
    one_w, one_h = left + columns * cell_w, title + top + rows * cell_h
    canvas = Image.new("RGB", (grids * one_w + (grids - 1) * GRID_GAP, one_h), (WHITE,) * 3)
    draw = ImageDraw.Draw(canvas)
    for z in range(grids):
        origin = z * (one_w + GRID_GAP)
        if z_labels:
            _write(draw, z_labels[z], font, (origin, 0, one_w, title), line_h)
        for x in range(columns):
            if x_labels:
                _write(draw, x_labels[x], font, (origin + left + x * cell_w, title, cell_w, top), line_h)
        for y in range(rows):
            if y_labels:
                _write(draw, y_labels[y], font, (origin, title + top + y * cell_h, left, cell_h), line_h)
            for x in range(columns):
                image = cells.get((x, y, z))
                corner = (origin + left + x * cell_w, title + top + y * cell_h)
                if image is None:
                    draw.rectangle((*corner, corner[0] + cell_w - 1, corner[1] + cell_h - 1), fill=(MISSING_GREY,) * 3)
                else:
                    canvas.paste(Image.fromarray(image), corner)
    return np.asarray(canvas, dtype=np.uint8).copy()


def _font(cell_w: int, cell_h: int):
    """Pillow's own font, sized to the cells as AUTOMATIC1111 sizes its labels ((w + h) / 25)."""
    from PIL import ImageFont, features

    if not features.check("freetype2"):
        return ImageFont.load_default()  # the fixed bitmap font: still legible, one size
    return ImageFont.load_default(size=max(MIN_FONT_SIZE, (cell_w + cell_h) // 25))


def _line_height(font) -> int:
    box = font.getbbox("Ag")
    return box[3] - min(box[1], 0) + 2


def _left_margin(y_labels: list[str], font, cell_w: int) -> int:
    """Wide enough for the longest Y label, at most one cell wide (longer labels wrap)."""
    if not y_labels:
        return 0
    widest = max(font.getlength(word) for label in y_labels for word in label.split() or [""])
    longest = max(font.getlength(label) for label in y_labels)
    return int(min(max(longest, widest), cell_w)) + 2 * LABEL_PADDING


def _wrapped(text: str, font, width: int) -> list[str]:
    """The text's words in lines no wider than `width` (a single longer word keeps its own line)."""
    lines: list[str] = []
    for word in text.split() or [""]:
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _lines_needed(labels: list[str], font, width: int, line_h: int) -> int:
    return max(len(_wrapped(label, font, width - 2 * LABEL_PADDING)) for label in labels)


def _write(draw, text: str, font, box: tuple[int, int, int, int], line_h: int) -> None:
    """The text centred in box (left, top, width, height), wrapped to its width."""
    left, top, width, height = box
    lines = _wrapped(text, font, width - 2 * LABEL_PADDING)
    y = top + (height - len(lines) * line_h) // 2
    for line in lines:
        x = left + (width - font.getlength(line)) / 2
        draw.text((x, y), line, fill=(BLACK,) * 3, font=font)
        y += line_h
