"""Synthetic indoor rooms written in ScanNet v2's raw format (the input of `prepare_scannet`).

`make_indoor_scannet(root, num_scenes, seed)` writes, under `root`:
  scans/sceneXXXX_00/sceneXXXX_00_vh_clean_2.ply               binary PLY mesh (xyz float32, RGBA uchar, faces)
  scans/sceneXXXX_00/sceneXXXX_00_vh_clean_2.0.010000.segs.json  per-vertex over-segment ids
  scans/sceneXXXX_00/sceneXXXX_00.aggregation.json              one group (raw label + segments) per object
  scannetv2-labels.combined.tsv                                 the real tsv rows for the names used here
  scannetv2_train.txt, scannetv2_val.txt                        the split (about 80/20)
Each room has a floor, four walls with a door and windows cut into them, pictures and curtains on the
walls, and furniture of one room type (bedroom, living room, office, kitchen, bathroom) placed without
overlap: wall pieces back against a wall, the rest at random positions and headings, chairs facing tables.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volt.data import synthetic_furniture as fur
from volt.data.synthetic_mesh import Mesh, MeshBuilder

# The real scannetv2-labels.combined.tsv rows for every raw category used here (ids, nyu40id, ...).
_TSV_HEADER = ("id|raw_category|category|count|nyu40id|eigen13id|nyuClass|nyu40class|eigen13class|ModelNet40|"
               "ModelNet10|ShapeNetCore55|synsetoffset|wnsynsetid|wnsynsetkey|mpcat40|mpcat40index")
_TSV_ROWS = """\
1|wall|wall|8277|1|12|wall|wall|Wall|||||n04546855|wall.n.01|wall|1
3|floor|floor|1553|2|5|floor|floor|Floor|||||n03365592|floor.n.01|floor|2
11|bed|bed|370|4|1|bed|bed|Bed|bed|bed|bed|2818832|n02818832|bed.n.01|bed|11
13|pillow|pillow|937|18|7|pillow|pillow|Objects|||pillow|3938244|n03938244|pillow.n.01|cushion|8
34|nightstand|nightstand|224|32|6|night stand|night stand|Furniture|night_stand|night_stand|||n03015254|chest_of_drawers.n.01|chest_of_drawers|13
2|chair|chair|4646|5|4|chair|chair|Chair|chair|chair|chair|3001627|n03001627|chair.n.01|chair|3
10|office chair|office chair|595|5|4|chair|chair|Chair|chair|chair|chair|3001627|n04373704|swivel_chair.n.01|chair|3
23|armchair|armchair|281|5|4|chair|chair|Chair|chair|chair|chair|3001627|n02738535|armchair.n.01|chair|3
4|table|table|1170|7|10|table|table|Table|table|table|table|4379243|n04379243|table.n.02|table|5
24|coffee table|coffee table|258|7|10|coffee table|table|Table|table|table|table|4379243|n03063968|coffee_table.n.01|table|5
44|end table|end table|147|7|10|table|table|Table|table|table|table|4379243|n04379243|table.n.02|table|5
9|desk|desk|680|14|10|desk|desk|Table|desk|desk|table|4379243|n03179701|desk.n.01|table|5
6|couch|couch|502|6|9|sofa|sofa|Sofa|sofa|sofa|sofa|4256520|n04256520|sofa.n.01|sofa|10
7|cabinet|cabinet|731|3|6|cabinet|cabinet|Furniture|||cabinet|2933112|n02933112|cabinet.n.01|cabinet|7
29|kitchen cabinet|kitchen cabinet|310|3|6|cabinet|cabinet|Furniture|||||n02933112|cabinet.n.01|cabinet|7
159|kitchen counter|kitchen counter|140|12|6|counter|counter|Furniture|table|table|table|4379243|n03116530|counter.n.01|counter|26
18|bookshelf|bookshelf|360|10|6|bookshelf|bookshelf|Furniture|bookshelf||bookshelf|2871439|n02871439|bookshelf.n.01|shelving|31
27|refrigerator|refrigerator|154|24|6|refridgerator|refridgerator|Furniture|||||n04070727|refrigerator.n.01|appliances|37
17|toilet|toilet|256|33|7|toilet|toilet|Objects|toilet|toilet|||n04446276|toilet.n.01|toilet|18
14|sink|sink|488|34|7|sink|sink|Objects|sink||||n04223580|sink.n.01|sink|15
42|bathtub|bathtub|144|36|7|bathtub|bathtub|Objects|bathtub|bathtub|tub|2808440|n02808440|bathtub.n.01|bathtub|25
56|trash can|trash can|1090|39|6|garbage bin|otherfurniture|Furniture|||trash_bin|2747177|n02747177|ashcan.n.01|objects|39
28|lamp|lamp|419|35|7|lamp|lamp|Objects|lamp||lamp|3636649|n03636649|lamp.n.02|lighting|28
5|door|door|1483|8|12|door|door|Wall|door||||n03221720|door.n.01|door|4
16|window|window|1209|9|13|window|window|Window|||||n04587648|window.n.01|window|9
15|picture|picture|862|11|8|picture|picture|Picture|||||n03931044|picture.n.01|picture|6
21|curtain|curtain|347|16|13|curtain|curtain|Window|curtain||||n03151077|curtain.n.01|curtain|12
"""
LABELS = [row.split("|")[1] for row in _TSV_ROWS.splitlines()]

# Room type -> (width range, depth range, [(maker, min count, max count)]), wall pieces listed first.
_chair, _office = (lambda r: fur.make_chair(r)), (lambda r: fur.make_chair(r, "office chair"))
ROOM_TYPES = {
    "bedroom": ((3.4, 5.0), (3.0, 4.6), [(fur.make_bed, 1, 1), (fur.make_nightstand, 0, 2), (fur.make_cabinet, 0, 2),
                                         (fur.make_desk, 0, 1), (fur.make_bookshelf, 0, 1), (_chair, 0, 1),
                                         (fur.make_lamp, 0, 1), (fur.make_trash_can, 0, 1)]),
    "living": ((4.0, 5.6), (3.5, 4.8), [(fur.make_couch, 1, 2), (fur.make_bookshelf, 0, 2), (fur.make_cabinet, 0, 2),
                                        (lambda r: fur.make_table(r, "coffee table"), 1, 1),
                                        (lambda r: fur.make_couch(r, "armchair"), 0, 2),
                                        (lambda r: fur.make_table(r, "end table"), 0, 1), (fur.make_lamp, 0, 1)]),
    "office": ((4.0, 5.6), (3.4, 4.8), [(fur.make_desk, 2, 3), (fur.make_bookshelf, 1, 2), (fur.make_cabinet, 1, 2),
                                        (_office, 2, 3), (fur.make_table, 0, 1), (fur.make_trash_can, 1, 2)]),
    "kitchen": ((3.2, 5.0), (3.0, 4.4), [(fur.make_kitchen_run, 1, 2), (fur.make_refrigerator, 1, 1),
                                         (fur.make_cabinet, 0, 1), (fur.make_table, 1, 1), (fur.make_trash_can, 0, 1)]),
    "bathroom": ((2.2, 3.4), (2.0, 3.0), [(fur.make_bathtub, 0, 1), (fur.make_toilet, 1, 1), (fur.make_sink, 1, 1),
                                          (fur.make_cabinet, 0, 1), (fur.make_trash_can, 0, 1)]),
}


@dataclass
class IndoorScene:
    """What was written for one room (used by tests and the demo report)."""

    name: str
    split: str
    num_vertices: int
    num_faces: int
    labels: list[str]  # raw label of each annotated object, in aggregation order (instance id = index)


def _corners(x, y, yaw, w, d) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.array([[-w, -d], [w, -d], [w, d], [-w, d]]) / 2
    return local @ np.array([[c, s], [-s, c]]) + (x, y)


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex quadrilaterals given as (4, 2) corner arrays."""
    for poly in (a, b):
        for i in range(4):
            edge = poly[(i + 1) % 4] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            pa, pb = a @ axis, b @ axis
            if pa.max() <= pb.min() or pb.max() <= pa.min():
                return False
    return True


class _Room:
    """Floor footprints taken so far and the wall frames (origin, yaw, length) of the four walls."""

    def __init__(self, w: float, d: float):
        self.w, self.d = w, d
        # Wall k: local x runs along the wall, local +y points out of the room, the surface faces -y.
        self.walls = [((w, 0.0), math.pi, w), ((w, d), -math.pi / 2, d), ((0.0, d), 0.0, w),
                      ((0.0, 0.0), math.pi / 2, d)]
        self.taken: list[np.ndarray] = []
        self.openings: list[list[tuple[float, float, float]]] = [[] for _ in range(4)]  # (s0, s1, bottom z)

    def to_world(self, k: int, s: float, t: float) -> tuple[float, float]:
        (ox, oy), yaw, _ = self.walls[k]
        return ox + s * math.cos(yaw) - t * math.sin(yaw), oy + s * math.sin(yaw) + t * math.cos(yaw)

    def free(self, box: np.ndarray) -> bool:
        inside = (box[:, 0] >= 0.01).all() and (box[:, 0] <= self.w - 0.01).all() and (box[:, 1] >= 0.01).all()
        return inside and (box[:, 1] <= self.d - 0.01).all() and not any(_overlap(box, o) for o in self.taken)

    def wall_clear(self, k: int, s0: float, s1: float, top: float) -> bool:
        return all(s1 < a - 0.05 or s0 > b + 0.05 or top < z for a, b, z in self.openings[k])


def _place(rng, room: _Room, item: fur.Item, tries: int = 40):
    """A pose (x, y, yaw) for `item` that is free, or None; wall items go back against a wall."""
    for _ in range(tries):
        if item.wall:
            k = int(rng.integers(4))
            length = room.walls[k][2]
            if length < item.width + 0.1:
                continue
            s = rng.uniform(item.width / 2 + 0.02, length - item.width / 2 - 0.02)
            if not room.wall_clear(k, s - item.width / 2, s + item.width / 2, item.height):
                continue
            x, y = room.to_world(k, s, -item.depth / 2 - rng.uniform(0.005, 0.04))
            yaw = room.walls[k][1] + rng.normal(0, 0.02)
        else:
            x, y = rng.uniform(0.3, room.w - 0.3), rng.uniform(0.3, room.d - 0.3)
            yaw = rng.uniform(0, 2 * math.pi)
        box = _corners(x, y, yaw, item.width, item.depth)
        if room.free(box):
            room.taken.append(box)
            return x, y, yaw
    return None


def _walls_and_openings(rng, m: MeshBuilder, room: _Room, height: float) -> None:
    """Door and windows (holes + their objects), then the four wall surfaces, pictures and curtains."""
    wall_color, door_wall = fur.pick_color(rng, [0, 1, 2, 3, 14, 15]), int(rng.integers(4))
    holes: list[list[tuple]] = [[] for _ in range(4)]
    for k in range(4):
        (ox, oy), yaw, length = room.walls[k]
        m.set_pose(ox, oy, 0.0, yaw)
        if k == door_wall:
            dw, dh = rng.uniform(0.8, 1.0), rng.uniform(1.98, 2.12)
            s0 = rng.uniform(0.15, length - dw - 0.15)
            holes[k].append((s0, s0 + dw, 0.0, dh))
            room.openings[k].append((s0, s0 + dw, 0.0))
            room.taken.append(np.array([room.to_world(k, s, t) for s, t in
                                        ((s0, 0), (s0 + dw, 0), (s0 + dw, -dw - 0.1), (s0, -dw - 0.1))]))
            m.begin_object("door")
            door = fur.pick_color(rng)
            m.box((s0 + dw / 2, 0.03, 0.0), (dw - 0.02, 0.04, dh - 0.01), door)
            for x0, x1, z0, z1 in ((s0 - 0.06, s0, 0, dh), (s0 + dw, s0 + dw + 0.06, 0, dh),
                                   (s0 - 0.06, s0 + dw + 0.06, dh, dh + 0.06)):  # frame
                m.box(((x0 + x1) / 2, -0.01, z0), (x1 - x0, 0.02, z1 - z0), door)
            m.box((s0 + dw - 0.1, -0.02, 1.0), (0.12, 0.04, 0.03), fur.pick_color(rng, [7, 8, 9]))
        for _ in range(int(rng.integers(0, 3)) if length > 1.6 else 0):
            ww, wh, sill = rng.uniform(0.7, min(1.8, length - 0.6)), rng.uniform(0.9, 1.5), rng.uniform(0.75, 1.0)
            s0 = rng.uniform(0.3, length - ww - 0.3)
            if not room.wall_clear(k, s0 - 0.35, s0 + ww + 0.35, sill + wh):
                continue
            wh = min(wh, height - sill - 0.15)
            curtain = rng.random() < 0.6
            holes[k].append((s0, s0 + ww, sill, sill + wh))
            room.openings[k].append((s0 - 0.3, s0 + ww + 0.3, 0.0 if curtain else sill))
            m.begin_object("window")
            frame = fur.pick_color(rng, [0, 1, 2, 5, 6, 8, 9])
            m.quad((s0, 0.1, sill), (ww, 0, 0), (0, 0, wh), np.array([150.0, 170, 185]) * rng.uniform(0.7, 1.1))
            for x0, x1, z0, z1 in ((s0, s0 + 0.05, sill, sill + wh), (s0 + ww - 0.05, s0 + ww, sill, sill + wh),
                                   (s0 + ww / 2 - 0.025, s0 + ww / 2 + 0.025, sill, sill + wh),
                                   (s0, s0 + ww, sill + wh - 0.05, sill + wh)):
                m.box(((x0 + x1) / 2, 0.05, z0), (x1 - x0, 0.1, z1 - z0), frame)
            m.box((s0 + ww / 2, 0.0, sill - 0.04), (ww + 0.1, 0.14, 0.04), frame)  # sill
            if curtain:
                m.begin_object("curtain")
                cloth, cw = fur.pick_color(rng), rng.uniform(0.35, 0.7)
                for cx in (s0 - cw * 0.6, s0 + ww - cw * 0.4):
                    m.sheet((cx, -0.12, 0.05), (cw, 0, 0), (0, 0, min(height - 0.1, sill + wh + 0.15)), cloth,
                            amplitude=0.04, wavelength=0.16)
    for k in range(4):  # the wall surfaces themselves, with holes where the door and windows are
        (ox, oy), yaw, length = room.walls[k]
        m.set_pose(ox, oy, 0.0, yaw)
        m.begin_object("wall")
        m.quad((0, 0, 0), (length, 0, 0), (0, 0, height), wall_color, patch=1.0, holes=holes[k])
        for _ in range(int(rng.integers(0, 3))):
            pw, ph = rng.uniform(0.3, 1.1), rng.uniform(0.3, 0.8)
            s0, z0 = rng.uniform(0.1, length - pw - 0.1), rng.uniform(1.0, 1.9 - ph / 3)
            if length > pw + 0.3 and room.wall_clear(k, s0, s0 + pw, 10.0):
                room.openings[k].append((s0, s0 + pw, 0.9))
                m.begin_object("picture")
                m.box((s0 + pw / 2, -0.01, z0), (pw, 0.02, ph), fur.pick_color(rng), bottom=True)


def build_room(rng: np.random.Generator, spacing: float = 0.05) -> Mesh:
    """One random room as a finished mesh."""
    kind = str(rng.choice(list(ROOM_TYPES), p=[0.25, 0.25, 0.2, 0.15, 0.15]))
    (w0, w1), (d0, d1), contents = ROOM_TYPES[kind]
    w, d, height = rng.uniform(w0, w1), rng.uniform(d0, d1), rng.uniform(2.4, 2.9)
    m = MeshBuilder(rng, spacing, light=(rng.uniform(0, w), rng.uniform(0, d), height - 0.1))
    room = _Room(w, d)
    m.begin_object("floor")
    m.quad((0, 0, 0), (w, 0, 0), (0, d, 0), fur.pick_color(rng, [1, 3, 4, 5, 6, 7, 8, 15]), patch=1.0)
    _walls_and_openings(rng, m, room, height)
    items = [maker(rng) for maker, lo, hi in contents for _ in range(int(rng.integers(lo, hi + 1)))]
    items += [fur.make_clutter(rng) for _ in range(int(rng.integers(0, 3)))]
    for item in items:
        pose = _place(rng, room, item)
        if pose is None:
            continue
        m.set_pose(pose[0], pose[1], 0.0, pose[2])
        item.build(m)
        if item.label == "table":
            _chairs_around(rng, m, room, item, pose)
    return m.finish()


def _chairs_around(rng, m: MeshBuilder, room: _Room, table: fur.Item, pose) -> None:
    """Up to four chairs just outside the table's sides, each facing the table's centre."""
    x, y, yaw = pose
    c, s = math.cos(yaw), math.sin(yaw)
    for lx, ly in [(0, -1), (0, 1), (-1, 0), (1, 0)][: int(rng.integers(1, 5))]:
        chair = fur.make_chair(rng)
        off = np.array([lx * (table.width + chair.depth) / 2, ly * (table.depth + chair.depth) / 2]) * 1.05
        cx, cy = x + c * off[0] - s * off[1], y + s * off[0] + c * off[1]
        cyaw = math.atan2(x - cx, -(y - cy)) + rng.normal(0, 0.15)  # local -y (front) towards the table
        box = _corners(cx, cy, cyaw, chair.width, chair.depth)
        if room.free(box):
            room.taken.append(box)
            m.set_pose(cx, cy, 0.0, cyaw)
            chair.build(m)


def write_scannet_scene(scene_dir: Path, name: str, mesh: Mesh) -> None:
    """Write one room's `_vh_clean_2.ply`, `segs.json` and `aggregation.json` into `scene_dir`."""
    import plyfile  # a core dependency; imported here to keep `import volt.data` light

    scene_dir.mkdir(parents=True, exist_ok=True)
    vert = np.empty(len(mesh.vertices), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"),
                                                ("green", "u1"), ("blue", "u1"), ("alpha", "u1")])
    for i, key in enumerate("xyz"):
        vert[key] = mesh.vertices[:, i]
    for i, key in enumerate(("red", "green", "blue")):
        vert[key] = mesh.colors[:, i]
    vert["alpha"] = 255
    face = np.empty(len(mesh.faces), dtype=[("vertex_indices", "<i4", (3,))])
    face["vertex_indices"] = mesh.faces
    elements = [plyfile.PlyElement.describe(vert, "vertex"),
                plyfile.PlyElement.describe(face, "face", len_types={"vertex_indices": "u1"},
                                            val_types={"vertex_indices": "i4"})]
    plyfile.PlyData(elements, text=False, byte_order="<").write(str(scene_dir / f"{name}_vh_clean_2.ply"))
    segs_name = f"{name}_vh_clean_2.0.010000.segs.json"
    params = {"kThresh": "0.0001", "segMinVerts": "20", "minPoints": "750", "maxPoints": "30000",
              "thinThresh": "0.05", "flatThresh": "0.001", "minLength": "0.02", "maxLength": "1"}
    segs = {"params": params, "sceneId": name, "segIndices": mesh.segments.tolist()}
    (scene_dir / segs_name).write_text(json.dumps(segs, separators=(",", ":")))
    groups = [{"id": i, "objectId": i, "segments": ids, "label": label} for i, (label, ids) in enumerate(mesh.groups)]
    agg = {"sceneId": f"scannet.{name}", "appId": "Aggregator.v2", "segGroups": groups,
           "segmentsFile": f"scannet.{segs_name}"}
    (scene_dir / f"{name}.aggregation.json").write_text(json.dumps(agg, indent=1))


def make_indoor_scannet(root: str | os.PathLike, num_scenes: int = 10, seed: int = 0,
                        spacing: float = 0.05) -> list[IndoorScene]:
    """Write `num_scenes` random rooms in ScanNet's raw layout under `root`; see the module docstring."""
    root = Path(root)
    names = [f"scene{i:04d}_00" for i in range(num_scenes)]
    num_val = max(1, round(0.2 * num_scenes)) if num_scenes >= 2 else 0
    split = {n: ("val" if i >= num_scenes - num_val else "train") for i, n in enumerate(names)}
    scenes = []
    for i, name in enumerate(names):
        # One generator per scene: scene i does not change when more scenes are asked for.
        mesh = build_room(np.random.default_rng([seed, 0, i]), spacing)
        write_scannet_scene(root / "scans" / name, name, mesh)
        scenes.append(IndoorScene(name, split[name], len(mesh.vertices), len(mesh.faces), [g[0] for g in mesh.groups]))
    tsv = "\n".join([_TSV_HEADER, *_TSV_ROWS.splitlines()]).replace("|", "\t") + "\n"
    (root / "scannetv2-labels.combined.tsv").write_text(tsv)
    for s in ("train", "val"):
        (root / f"scannetv2_{s}.txt").write_text("".join(f"{n}\n" for n in names if split[n] == s))
    return scenes
