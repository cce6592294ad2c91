"""Drawing scenes with PIL: one flat-colored silhouette per object, one object per grid cell.

Shapes are chosen so a tiny vision tower can tell the twelve categories apart at both sizes; every pixel that is not
background belongs to exactly one object, which is what lets tests check the ground truth against the pixels.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from rlaifv.world.scenes import COLORS, GRID, Scene, WorldObject

IMAGE_SIZE = 96  # pixels per side
CELL = IMAGE_SIZE // GRID  # 32 pixels per cell
BACKGROUND = (45, 45, 45)
SIZE_PX = {"small": 16, "large": 26}  # side of an object's bounding box


def object_box(obj: WorldObject, jitter: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the square an object is drawn into; always inside its cell."""
    s = SIZE_PX[obj.size]
    row, col = divmod(obj.cell, GRID)
    x0 = col * CELL + (CELL - s) // 2 + jitter[0]
    y0 = row * CELL + (CELL - s) // 2 + jitter[1]
    return x0, y0, x0 + s - 1, y0 + s - 1


def _draw(draw: ImageDraw.ImageDraw, category: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0

    def px(fx: float, fy: float) -> tuple[float, float]:  # fractions of the box -> pixels
        return x0 + fx * w, y0 + fy * h

    if category == "fork":  # handle, crossbar, three prongs
        draw.rectangle([*px(0.42, 0.45), *px(0.58, 1.0)], fill=fill)
        draw.rectangle([*px(0.15, 0.35), *px(0.85, 0.5)], fill=fill)
        for fx in (0.15, 0.43, 0.71):
            draw.rectangle([*px(fx, 0.0), *px(fx + 0.14, 0.4)], fill=fill)
    elif category == "knife":  # pointed blade over a wider handle
        draw.polygon([px(0.4, 0.0), px(0.6, 0.15), px(0.6, 0.6), px(0.4, 0.6)], fill=fill)
        draw.rectangle([*px(0.32, 0.6), *px(0.68, 1.0)], fill=fill)
    elif category == "cup":  # body with a ring handle on the right
        draw.rectangle([*px(0.1, 0.2), *px(0.7, 1.0)], fill=fill)
        draw.ellipse([*px(0.55, 0.35), *px(1.0, 0.8)], outline=fill, width=max(2, int(w * 0.12)))
    elif category == "car":  # body, cabin, two wheels
        draw.rectangle([*px(0.0, 0.45), *px(1.0, 0.8)], fill=fill)
        draw.polygon([px(0.2, 0.45), px(0.32, 0.15), px(0.68, 0.15), px(0.8, 0.45)], fill=fill)
        draw.ellipse([*px(0.1, 0.7), *px(0.35, 1.0)], fill=fill)
        draw.ellipse([*px(0.65, 0.7), *px(0.9, 1.0)], fill=fill)
    elif category == "house":  # square body under a triangular roof
        draw.polygon([px(0.0, 0.45), px(0.5, 0.0), px(1.0, 0.45)], fill=fill)
        draw.rectangle([*px(0.12, 0.45), *px(0.88, 1.0)], fill=fill)
    elif category == "tree":  # triangle crown on a trunk
        draw.polygon([px(0.5, 0.0), px(1.0, 0.75), px(0.0, 0.75)], fill=fill)
        draw.rectangle([*px(0.4, 0.75), *px(0.6, 1.0)], fill=fill)
    elif category == "sun":  # disc with rays
        draw.ellipse([*px(0.25, 0.25), *px(0.75, 0.75)], fill=fill)
        lw = max(1, int(w * 0.1))
        rays = (((0.5, 0.0), (0.5, 1.0)), ((0.0, 0.5), (1.0, 0.5)), ((0.1, 0.1), (0.9, 0.9)), ((0.9, 0.1), (0.1, 0.9)))
        for a, b in rays:
            draw.line([px(*a), px(*b)], fill=fill, width=lw)
    elif category == "cloud":  # three overlapping blobs on a flat base
        draw.ellipse([*px(0.0, 0.4), *px(0.45, 0.85)], fill=fill)
        draw.ellipse([*px(0.25, 0.15), *px(0.75, 0.75)], fill=fill)
        draw.ellipse([*px(0.55, 0.4), *px(1.0, 0.85)], fill=fill)
    elif category == "star":  # five-pointed star
        pts = []
        for i in range(10):
            r = 0.5 if i % 2 == 0 else 0.2
            a = -math.pi / 2 + i * math.pi / 5
            pts.append(px(0.5 + r * math.cos(a), 0.52 + r * math.sin(a)))
        draw.polygon(pts, fill=fill)
    elif category == "ball":  # plain disc
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif category == "kite":  # diamond with a tail
        draw.polygon([px(0.5, 0.0), px(0.85, 0.35), px(0.5, 0.75), px(0.15, 0.35)], fill=fill)
        draw.line([px(0.5, 0.75), px(0.35, 1.0)], fill=fill, width=max(1, int(w * 0.08)))
    elif category == "box":  # hollow square
        draw.rectangle([x0, y0, x1, y1], outline=fill, width=max(2, int(w * 0.18)))
    else:
        raise ValueError(f"no drawing for category {category!r}")


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image of IMAGE_SIZE x IMAGE_SIZE pixels."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj, jit in zip(scene.objects, scene.jitter):
        _draw(draw, obj.category, object_box(obj, jit), COLORS[obj.color])
    return image
