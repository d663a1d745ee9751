"""Furniture for the synthetic rooms, built from boxes, cylinders and discs with plausible random sizes.

Each `make_<thing>(rng)` draws the sizes and colours of one piece and returns an `Item`: its raw ScanNet
category name, its footprint (width along local x, depth along local y), whether it stands against a wall,
and a `build(mesh)` function that emits the mesh in the item's local frame (footprint centred on the
origin, standing on z = 0, back side at +y, front at -y). The room layout (`synthetic_indoor`) chooses the
pose. Sizes are drawn so that classes overlap in height (tables/desks vs. bed and couch tops, cabinets vs.
bookshelves) and colours come from one palette shared by every class, so no single cue names the class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from volt.data.synthetic_mesh import MeshBuilder

# One palette for walls, floors and furniture alike (RGB): whites, woods, greys, fabrics.
PALETTE = np.array([
    [236, 232, 222], [222, 214, 198], [205, 205, 200], [214, 192, 160], [192, 152, 104],
    [150, 108, 70], [108, 76, 48], [130, 130, 128], [84, 84, 90], [45, 45, 48],
    [70, 92, 140], [92, 122, 84], [150, 64, 54], [52, 62, 92], [220, 200, 142], [170, 160, 150],
], dtype=np.float64)


def pick_color(rng: np.random.Generator, choices=None) -> np.ndarray:
    """A palette colour (optionally from a subset of indices) with a random per-object tint."""
    idx = rng.integers(len(PALETTE)) if choices is None else rng.choice(choices)
    return np.clip(PALETTE[idx] * rng.uniform(0.88, 1.08) + rng.normal(0, 6, 3), 0, 255)


@dataclass
class Item:
    label: str
    width: float
    depth: float
    wall: bool  # stands with its back (+y) against a wall
    height: float
    build: Callable[[MeshBuilder], None]


def _legs(m: MeshBuilder, w: float, d: float, h: float, t: float, color, inset: float = 0.02) -> None:
    for sx in (-1, 1):
        for sy in (-1, 1):
            m.box((sx * (w / 2 - inset - t / 2), sy * (d / 2 - inset - t / 2), 0.0), (t, t, h), color)


def make_bed(rng) -> Item:
    w, d = rng.choice([0.95, 1.2, 1.4, 1.6, 1.8]) + rng.uniform(-0.05, 0.05), rng.uniform(1.95, 2.15)
    frame_h, mat_h, head_h = rng.uniform(0.15, 0.35), rng.uniform(0.14, 0.28), rng.uniform(0.8, 1.3)
    frame, mattress, linen = pick_color(rng), pick_color(rng), pick_color(rng)
    pillows = rng.integers(0, 3)

    def build(m: MeshBuilder) -> None:
        m.begin_object("bed")
        m.box((0, 0, 0), (w, d, frame_h), frame)
        m.box((0, -0.02, frame_h), (w - 0.04, d - 0.1, mat_h), mattress)
        m.box((0, -0.1, frame_h + mat_h), (w - 0.02, d * 0.6, 0.03), linen)  # blanket
        m.box((0, d / 2 - 0.03, 0), (w, 0.06, head_h), frame)
        for k in range(pillows):
            m.begin_object("pillow")
            x = 0.0 if pillows == 1 else (k - 0.5) * w / 2
            m.box((x, d / 2 - 0.3, frame_h + mat_h), (min(0.55, w / 2 - 0.05), 0.35, 0.12), pick_color(rng))
    return Item("bed", w, d, True, frame_h + mat_h, build)


def make_nightstand(rng) -> Item:
    w, d, h = rng.uniform(0.38, 0.55), rng.uniform(0.35, 0.5), rng.uniform(0.45, 0.7)
    body, knob = pick_color(rng), pick_color(rng)

    def build(m: MeshBuilder) -> None:
        m.begin_object("nightstand")
        m.box((0, 0, 0), (w, d, h), body)
        m.box((0, -d / 2 - 0.01, h * 0.55), (w - 0.06, 0.02, h * 0.3), body)  # drawer front
        m.box((0, -d / 2 - 0.03, h * 0.68), (0.06, 0.02, 0.03), knob)
    return Item("nightstand", w, d, True, h, build)


def make_chair(rng, label: str = "chair") -> Item:
    w, d = rng.uniform(0.4, 0.52), rng.uniform(0.4, 0.52)
    seat_h, back_h = rng.uniform(0.42, 0.52), rng.uniform(0.3, 0.55)
    seat, frame = pick_color(rng), pick_color(rng)

    def build(m: MeshBuilder) -> None:
        m.begin_object(label)
        if label == "office chair":  # five-star base stand-in: a cross, a column, a thick seat
            m.box((0, 0, 0.04), (0.56, 0.06, 0.05), frame)
            m.box((0, 0, 0.04), (0.06, 0.56, 0.05), frame)
            m.cylinder((0, 0, 0.09), 0.03, seat_h - 0.16, frame, top=False)
            m.box((0, 0, seat_h - 0.08), (w, d, 0.08), seat, bottom=True)
        else:
            _legs(m, w, d, seat_h - 0.05, 0.035, frame, inset=0.0)
            m.box((0, 0, seat_h - 0.05), (w, d, 0.05), seat, bottom=True)
        m.box((0, d / 2 - 0.025, seat_h + 0.04), (w * 0.95, 0.05, back_h), seat)
    return Item(label, w, d, False, seat_h + back_h, build)


def make_couch(rng, label: str = "couch") -> Item:
    seats = 1 if label == "armchair" else int(rng.integers(2, 4))
    arm_w, back_t = rng.uniform(0.1, 0.22), rng.uniform(0.15, 0.25)
    w, d = seats * rng.uniform(0.55, 0.75) + 2 * arm_w, rng.uniform(0.8, 1.0)
    seat_h, back_top, arm_h = rng.uniform(0.38, 0.5), rng.uniform(0.72, 0.98), rng.uniform(0.5, 0.68)
    cover, cushion = pick_color(rng), pick_color(rng)

    def build(m: MeshBuilder) -> None:
        m.begin_object(label)
        inner = w - 2 * arm_w
        m.box((0, -back_t / 2, 0.05), (inner, d - back_t, seat_h - 0.17), cover)
        for k in range(seats):  # seat cushions
            cw = inner / seats
            m.box((-inner / 2 + (k + 0.5) * cw, -back_t / 2, seat_h - 0.12), (cw - 0.02, d - back_t, 0.12), cushion)
        m.box((0, d / 2 - back_t / 2, 0.05), (w, back_t, back_top - 0.05), cover)
        for sx in (-1, 1):
            m.box((sx * (w / 2 - arm_w / 2), 0, 0.05), (arm_w, d, arm_h - 0.05), cover)
        _legs(m, w, d, 0.05, 0.05, pick_color(rng))
    return Item(label, w, d, label == "couch", back_top, build)


def make_table(rng, label: str = "table") -> Item:
    h = {"table": (0.55, 0.78), "coffee table": (0.33, 0.5), "end table": (0.45, 0.62)}[label]
    size = {"table": ((0.8, 1.8), (0.6, 1.0)), "coffee table": ((0.7, 1.3), (0.45, 0.75)),
            "end table": ((0.4, 0.6), (0.4, 0.6))}[label]
    w, d, h, top_t = rng.uniform(*size[0]), rng.uniform(*size[1]), rng.uniform(*h), rng.uniform(0.025, 0.05)
    top, legs, pedestal = pick_color(rng), pick_color(rng), rng.random() < 0.25

    def build(m: MeshBuilder) -> None:
        m.begin_object(label)
        m.box((0, 0, h - top_t), (w, d, top_t), top, bottom=True)
        if pedestal:
            m.cylinder((0, 0, 0), min(w, d) * 0.28, 0.03, legs)
            m.cylinder((0, 0, 0.03), 0.05, h - top_t - 0.03, legs, top=False)
        else:
            _legs(m, w, d, h - top_t, rng.uniform(0.035, 0.06), legs, inset=rng.uniform(0.0, 0.08))
    return Item(label, w, d, False, h, build)


def make_desk(rng) -> Item:
    w, d, h = rng.uniform(1.0, 1.8), rng.uniform(0.55, 0.8), rng.uniform(0.68, 0.78)
    top, side, drawers = pick_color(rng), pick_color(rng), rng.random() < 0.5

    def build(m: MeshBuilder) -> None:
        m.begin_object("desk")
        m.box((0, 0, h - 0.03), (w, d, 0.03), top, bottom=True)
        for sx in (-1, 1):
            if drawers and sx == 1:
                m.box((w / 2 - 0.22, 0, 0), (0.42, d - 0.04, h - 0.03), side)
            else:
                m.box((sx * (w / 2 - 0.015), 0, 0), (0.03, d - 0.04, h - 0.03), side)
        m.box((0, d / 2 - 0.03, h * 0.45), (w - 0.06, 0.02, h * 0.45), side)  # modesty panel
    return Item("desk", w, d, True, h, build)


def _door_fronts(m: MeshBuilder, w, d, z0, h, color, handle, doors: int) -> None:
    """Door panels on the -y face with a small gap between them, and a handle each."""
    dw = w / doors
    for k in range(doors):
        x = -w / 2 + (k + 0.5) * dw
        m.box((x, -d / 2 - 0.01, z0 + 0.02), (dw - 0.02, 0.02, h - 0.04), color)
        hx = x + (dw / 2 - 0.06) * (1 if k % 2 == 0 else -1)
        m.box((hx, -d / 2 - 0.035, z0 + h * 0.6), (0.02, 0.02, 0.12), handle)


def make_cabinet(rng, label: str = "cabinet", height=(0.5, 2.1), depth=(0.35, 0.6)) -> Item:
    w, d, h = rng.uniform(0.5, 1.4), rng.uniform(*depth), rng.uniform(*height)
    body = pick_color(rng)
    doors, handle = int(np.clip(round(w / 0.45), 1, 3)), pick_color(rng)

    def build(m: MeshBuilder) -> None:
        m.begin_object(label)
        m.box((0, 0, 0), (w, d, h), body, bottom=label == "kitchen cabinet")
        _door_fronts(m, w, d, 0.0, h, body, handle, doors)
    return Item(label, w, d, True, h, build)


def make_kitchen_run(rng) -> Item:
    """Base kitchen cabinets with a counter slab on top (two annotated objects)."""
    w, d, h = rng.uniform(1.0, 2.6), rng.uniform(0.55, 0.65), rng.uniform(0.84, 0.92)
    body, slab, handle = pick_color(rng), pick_color(rng), pick_color(rng)

    def build(m: MeshBuilder) -> None:
        m.begin_object("kitchen cabinet")
        m.box((0, 0.02, 0.08), (w, d - 0.04, h - 0.12), body)
        m.box((0, 0.06, 0), (w, d - 0.12, 0.08), pick_color(rng))  # recessed plinth
        _door_fronts(m, w, d - 0.04, 0.08, h - 0.12, body, handle, max(1, int(w / 0.5)))
        m.begin_object("kitchen counter")
        m.box((0, -0.01, h - 0.04), (w + 0.02, d + 0.02, 0.04), slab, bottom=True)
    return Item("kitchen cabinet", w, d, True, h, build)


def make_bookshelf(rng) -> Item:
    w, d, h = rng.uniform(0.6, 1.2), rng.uniform(0.25, 0.4), rng.uniform(0.8, 2.1)
    wood, t = pick_color(rng), 0.025
    levels = max(2, int(h / rng.uniform(0.3, 0.42)))
    book_colors = [pick_color(rng) for _ in range(6)]

    def build(m: MeshBuilder) -> None:
        m.begin_object("bookshelf")
        for sx in (-1, 1):
            m.box((sx * (w / 2 - t / 2), 0, 0), (t, d, h), wood)
        m.box((0, d / 2 - 0.01, 0), (w - 2 * t, 0.02, h), wood)  # back panel
        for k in range(levels + 1):
            z = min(k * (h - t) / levels, h - t)
            m.box((0, 0, z), (w - 2 * t, d - 0.02, t), wood, bottom=k > 0)
            if k < levels:  # a row of books on this shelf
                x, gap = -w / 2 + t, (h - t) / levels - t
                while x < w / 2 - t - 0.1:
                    bw = float(rng.uniform(0.1, 0.3))
                    bw = min(bw, w / 2 - t - x)
                    bh = float(rng.uniform(0.5, 0.9)) * gap
                    m.box((x + bw / 2, 0.0, z + t), (bw, d * 0.75, bh), book_colors[int(rng.integers(6))])
                    x += bw + float(rng.uniform(0.0, 0.15))
    return Item("bookshelf", w, d, True, h, build)


def make_refrigerator(rng) -> Item:
    w, d, h = rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.75), rng.uniform(1.4, 1.95)
    body, handle = pick_color(rng, [0, 1, 2, 7, 8, 9, 15]), pick_color(rng)

    def build(m: MeshBuilder) -> None:
        m.begin_object("refrigerator")
        m.box((0, 0, 0), (w, d, h), body)
        split = h * rng.uniform(0.3, 0.4)
        for z0, zh in ((0.0, split), (split, h - split)):
            m.box((0, -d / 2 - 0.015, z0 + 0.01), (w - 0.01, 0.03, zh - 0.02), body)
            m.box((w / 2 - 0.06, -d / 2 - 0.05, z0 + zh * 0.3), (0.025, 0.03, zh * 0.4), handle)
    return Item("refrigerator", w, d, True, h, build)


def make_toilet(rng) -> Item:
    r, bowl_h, white = rng.uniform(0.17, 0.22), rng.uniform(0.38, 0.44), pick_color(rng, [0, 1, 2, 15])
    d = 0.2 + 2 * r + 0.12

    def build(m: MeshBuilder) -> None:
        m.begin_object("toilet")
        m.box((0, d / 2 - 0.1, 0), (0.2, 0.2, bowl_h), white)  # trap
        m.box((0, d / 2 - 0.1, bowl_h), (0.44, 0.2, 0.36), white)  # tank
        m.cylinder((0, d / 2 - 0.2 - r, 0), r, bowl_h, white)
    return Item("toilet", 0.45, d, True, bowl_h + 0.36, build)


def make_sink(rng) -> Item:
    w, d, h = rng.uniform(0.45, 0.65), rng.uniform(0.38, 0.48), rng.uniform(0.78, 0.9)
    white = pick_color(rng, [0, 1, 2, 15])

    def build(m: MeshBuilder) -> None:
        m.begin_object("sink")
        m.cylinder((0, 0.05, 0), rng.uniform(0.07, 0.11), h - 0.16, white, top=False)
        m.box((0, 0, h - 0.16), (w, d, 0.16), white, bottom=True)
        m.cylinder((0, d / 2 - 0.05, h), 0.015, 0.15, pick_color(rng, [2, 7]))  # tap
    return Item("sink", w, d, True, h, build)


def make_bathtub(rng) -> Item:
    w, d, h, rim = rng.uniform(1.5, 1.75), rng.uniform(0.7, 0.82), rng.uniform(0.5, 0.6), 0.08
    white = pick_color(rng, [0, 1, 2, 15])

    def build(m: MeshBuilder) -> None:
        m.begin_object("bathtub")
        x0, y0 = -w / 2, -d / 2
        m.quad((x0, y0, h), (w, 0, 0), (0, d, 0), white, holes=[(rim, w - rim, rim, d - rim)])  # rim
        for o, u, v in (((x0 + w, y0, 0), (0, d, 0), (0, 0, h)), ((x0, y0, 0), (0, 0, h), (0, d, 0)),
                        ((x0, y0 + d, 0), (0, 0, h), (w, 0, 0)), ((x0, y0, 0), (w, 0, 0), (0, 0, h))):
            m.quad(o, u, v, white)  # outer sides
        xi, yi, wi, di = x0 + rim, y0 + rim, w - 2 * rim, d - 2 * rim
        m.quad((xi, yi, 0.1), (wi, 0, 0), (0, di, 0), white)  # inner floor, facing up
        hi = h - 0.1
        for o, u, v in (((xi + wi, yi, 0.1), (0, 0, hi), (0, di, 0)), ((xi, yi, 0.1), (0, di, 0), (0, 0, hi)),
                        ((xi, yi + di, 0.1), (wi, 0, 0), (0, 0, hi)), ((xi, yi, 0.1), (0, 0, hi), (wi, 0, 0))):
            m.quad(o, u, v, white)  # inner sides, facing the tub's centre
    return Item("bathtub", w, d, True, h, build)


def make_trash_can(rng) -> Item:
    r, h, c = rng.uniform(0.12, 0.2), rng.uniform(0.3, 0.65), pick_color(rng)

    def build(m: MeshBuilder) -> None:
        m.begin_object("trash can")
        m.cylinder((0, 0, 0), r, h, c, top=False)
    return Item("trash can", 2 * r, 2 * r, False, h, build)


def make_lamp(rng) -> Item:
    pole, shade_r, base = rng.uniform(1.1, 1.6), rng.uniform(0.15, 0.22), pick_color(rng)

    def build(m: MeshBuilder) -> None:
        m.begin_object("lamp")
        m.cylinder((0, 0, 0), 0.15, 0.03, base)
        m.cylinder((0, 0, 0.03), 0.015, pole, base, top=False)
        m.cylinder((0, 0, pole - 0.05), shade_r, 0.28, pick_color(rng, [0, 1, 3, 14]), top=False)
    return Item("lamp", 0.3, 0.3, False, pole + 0.23, build)


def make_clutter(rng) -> Item:
    """An unannotated box on the floor (ScanNet leaves many small things without a label)."""
    w, d, h = rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5), rng.uniform(0.1, 0.45)
    c = pick_color(rng)

    def build(m: MeshBuilder) -> None:
        m.begin_object(None)
        m.box((0, 0, 0), (w, d, h), c)
    return Item("clutter", w, d, False, h, build)
