"""Scenes of the synthetic world: what is in an image, sampled from a co-occurrence prior.

The world is a 3 x 3 grid of cells; each object sits in one cell. Categories come in themed groups, and some
categories have a *partner* that usually appears with them (fork and knife, sun and cloud). That prior is what a
captioner -- and so a policy trained on its captions -- leans on when it mentions objects that are not there, the
way real VLMs hallucinate. Ground truth is exact: a scene *is* its list of objects.

Splits are disjoint by construction: a scene belongs to the split that a hash of (seed, scene content) assigns it
to, so no held-out scene ever equals a training scene, whatever the split sizes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# Themed groups; a scene draws most objects from one theme.
GROUPS: dict[str, tuple[str, ...]] = {
    "table": ("fork", "knife", "cup"),
    "street": ("car", "house", "tree"),
    "sky": ("sun", "cloud", "star"),
    "play": ("ball", "kite", "box"),
}
CATEGORIES: tuple[str, ...] = tuple(c for group in GROUPS.values() for c in group)
THEME_OF: dict[str, str] = {c: g for g, cs in GROUPS.items() for c in cs}

# Partners co-occur strongly; an absent partner is the typical hallucination and a hard negative for the labeler.
_PARTNER_PAIRS = (("fork", "knife"), ("house", "tree"), ("sun", "cloud"), ("ball", "kite"))
PARTNER: dict[str, str] = {a: b for a, b in _PARTNER_PAIRS} | {b: a for a, b in _PARTNER_PAIRS}

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "purple": (160, 60, 210),
}
# The color a category "usually" has; captioners write it from habit, and the world leans towards it.
TYPICAL_COLOR: dict[str, str] = {
    "fork": "white", "knife": "white", "cup": "blue", "car": "red", "house": "yellow", "tree": "green",
    "sun": "yellow", "cloud": "white", "star": "yellow", "ball": "red", "kite": "purple", "box": "green",
}
SIZES: tuple[str, ...] = ("small", "large")

GRID = 3  # cells per side
N_CELLS = GRID * GRID
# Cell names in reading order (row-major from the top left).
CELL_NAMES: tuple[str, ...] = (
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right",
)

SPLITS: tuple[str, ...] = ("train", "prompts", "val", "test")
# Share of scene space each split owns (hash buckets out of 100).
_SPLIT_BUCKETS: dict[str, range] = {
    "train": range(0, 70), "prompts": range(70, 82), "val": range(82, 88), "test": range(88, 100),
}


@dataclass(frozen=True, slots=True)
class WorldObject:
    """One object of a scene: what it is, how it looks and which grid cell it occupies."""

    category: str  # one of CATEGORIES
    color: str  # one of COLORS
    size: str  # one of SIZES
    cell: int  # 0..8, row-major from the top left

    @property
    def position(self) -> str:
        return CELL_NAMES[self.cell]


@dataclass(frozen=True, slots=True)
class Scene:
    """A scene's exact ground truth; `scene_id` is unique within a world seed."""

    scene_id: str
    split: str
    objects: tuple[WorldObject, ...]  # sorted by cell (reading order); categories are unique within a scene
    jitter: tuple[tuple[int, int], ...]  # per object (dx, dy) pixel offsets, rendering detail only

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(o.category for o in self.objects)

    def object_of(self, category: str) -> WorldObject | None:
        return next((o for o in self.objects if o.category == category), None)

    def signature(self) -> tuple:
        """The content that makes two scenes 'the same' (rendering jitter aside)."""
        return tuple((o.category, o.color, o.size, o.cell) for o in self.objects)


class ScenePrior(BaseModel):
    """Knobs of the co-occurrence prior. Defaults: a present object's partner is there about 2 times in 3, and 55 % of
    scenes hold an object whose partner is missing (where the captioner's habit adds it; 49 % at partner_prob 0.65)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_objects: int = Field(1, ge=1, le=N_CELLS, description="fewest objects in a scene")
    max_objects: int = Field(5, ge=1, le=N_CELLS, description="most objects in a scene")
    theme_prob: float = Field(0.8, ge=0, le=1, description="chance that the next object comes from the scene's theme")
    partner_prob: float = Field(0.4, ge=0, le=1, description="chance that an object's partner is added right after it")
    typical_color_prob: float = Field(
        0.35, ge=0, le=1, description="chance that an object has its category's typical color rather than a random one"
    )


def split_of(seed: int, signature: tuple) -> str:
    """Which split owns a scene: a stable hash of (seed, content), so splits never share a scene."""
    digest = hashlib.sha256(repr((seed, signature)).encode()).digest()
    bucket = int.from_bytes(digest[:4], "big") % 100
    return next(name for name, r in _SPLIT_BUCKETS.items() if bucket in r)


def _sample_objects(rng: np.random.Generator, prior: ScenePrior) -> tuple[list[WorldObject], list[tuple[int, int]]]:
    k = int(rng.integers(prior.min_objects, prior.max_objects + 1))
    theme = GROUPS[list(GROUPS)[int(rng.integers(len(GROUPS)))]]
    cats: list[str] = []
    while len(cats) < k:
        in_theme = [c for c in theme if c not in cats]
        pool = in_theme if in_theme and rng.random() < prior.theme_prob else [c for c in CATEGORIES if c not in cats]
        cat = pool[int(rng.integers(len(pool)))]
        cats.append(cat)
        partner = PARTNER.get(cat)
        if partner and partner not in cats and len(cats) < k and rng.random() < prior.partner_prob:
            cats.append(partner)
    cells = rng.choice(N_CELLS, size=k, replace=False)
    color_names = list(COLORS)
    objects, jitter = [], []
    for cat, cell in zip(cats, cells):
        if rng.random() < prior.typical_color_prob:
            color = TYPICAL_COLOR[cat]
        else:
            color = color_names[int(rng.integers(len(color_names)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        objects.append(WorldObject(cat, color, size, int(cell)))
        jitter.append((int(rng.integers(-3, 4)), int(rng.integers(-3, 4))))
    order = np.argsort([o.cell for o in objects], kind="stable")
    return [objects[i] for i in order], [jitter[i] for i in order]


def iter_scenes(seed: int, split: str, prior: ScenePrior | None = None) -> Iterator[Scene]:
    """All scenes of one split, in a fixed order: the first n are the same whatever n a caller asks for."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    prior = prior or ScenePrior()
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    index = 0
    while True:
        objects, jitter = _sample_objects(rng, prior)
        signature = tuple((o.category, o.color, o.size, o.cell) for o in objects)
        if split_of(seed, signature) != split:
            continue
        yield Scene(f"{split}-{index:06d}", split, tuple(objects), tuple(jitter))
        index += 1


def sample_scenes(seed: int, split: str, n: int, prior: ScenePrior | None = None) -> list[Scene]:
    """The first n scenes of a split."""
    it = iter_scenes(seed, split, prior)
    return [next(it) for _ in range(n)]


def scene_to_dict(scene: Scene) -> dict[str, Any]:
    """A scene as plain JSON-ready data, so it can travel inside a prompt row and be rebuilt exactly later."""
    return {
        "scene_id": scene.scene_id,
        "split": scene.split,
        "objects": [{"category": o.category, "color": o.color, "size": o.size, "cell": o.cell} for o in scene.objects],
        "jitter": [[dx, dy] for dx, dy in scene.jitter],
    }


def scene_from_dict(data: Mapping[str, Any]) -> Scene:
    """Inverse of `scene_to_dict`. Lists stand in for tuples (JSON and Parquet have no tuples).

    Raises ValueError on values outside the world (unknown category, color, size or cell, a jitter per object
    missing), because metrics computed from a corrupted scene would be silently wrong.
    """
    objects = tuple(
        WorldObject(str(o["category"]), str(o["color"]), str(o["size"]), int(o["cell"])) for o in data["objects"]
    )
    jitter = tuple((int(dx), int(dy)) for dx, dy in data["jitter"])
    for o in objects:
        if o.category not in CATEGORIES or o.color not in COLORS or o.size not in SIZES or not 0 <= o.cell < N_CELLS:
            raise ValueError(f"object outside the world: {o}")
    if len(jitter) != len(objects):
        raise ValueError(f"{len(objects)} objects but {len(jitter)} jitter offsets")
    if data["split"] not in SPLITS:
        raise ValueError(f"unknown split {data['split']!r}")
    return Scene(str(data["scene_id"]), str(data["split"]), objects, jitter)
