"""Procedural streets for the synthetic LiDAR sweeps: the world as analytic primitives with nuScenes fine labels.

`build_street(rng, ego_x)` returns a `Street`: a road along world x (surface at z = 0, centred on y = 0),
raised blocks on both sides whose tops are sidewalk near their edges and terrain further in (their sides
are the curbs), building facades, street lights, trees (trunk + crown) and bushes, parked and moving cars
and trucks, pedestrians, barriers and traffic cones, each a few boxes, cylinders or ellipsoids carrying a
lidarseg fine class id and a reflectivity factor. `synthetic_outdoor` drives the sensor through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from volt.data.synthetic_lidar import BOX, CYLINDER, ELLIPSOID, PrimitiveList, Primitives, rot_x, rot_z

# lidarseg fine class ids (index into category.json) used by the generator.
NOISE, PED, BARRIER, CONE, CAR, TRUCK = 0, 2, 9, 12, 17, 23
ROAD, SIDEWALK, TERRAIN, MANMADE, VEGETATION = 24, 26, 27, 28, 30
# Mean and spread of the LiDAR intensity (0-255) per class before the per-object reflectivity factor:
# wide and overlapping, as on real sensors.
INTENSITY = {NOISE: (12, 10), PED: (12, 7), BARRIER: (32, 16), CONE: (45, 25), CAR: (14, 10), TRUCK: (18, 11),
             ROAD: (7, 4), SIDEWALK: (16, 8), TERRAIN: (10, 6), MANMADE: (20, 12), VEGETATION: (9, 6)}


@dataclass
class Street:
    prims: Primitives
    half_width: float  # road half width; the road runs along world x, centred on y = 0
    ego_y: float  # lane the sensor car drives in


def _vehicle(p: PrimitiveList, rng, x, y, z, yaw, truck: bool) -> None:
    """Car: body + cabin + two axles; truck: cab + cargo box + axles."""
    r = rot_z(yaw)
    fwd = r[:, 0]
    if truck:
        length, width = rng.uniform(6.0, 10.0), rng.uniform(2.3, 2.55)
        cab, cargo_h = rng.uniform(1.8, 2.3), rng.uniform(3.0, 3.8)
        parts = [((length - cab) / 2, cab, 0.5, rng.uniform(2.5, 3.0)), (-cab / 2, length - cab - 0.3, 0.9, cargo_h)]
        label, wheel_r = TRUCK, rng.uniform(0.45, 0.55)
    else:
        length, width = rng.uniform(3.8, 5.0), rng.uniform(1.7, 2.0)
        low = rng.uniform(0.55, 0.8)
        parts = [(0.0, length, 0.3, low), (-0.05 * length, 0.55 * length, 0.3 + low, rng.uniform(0.45, 0.6))]
        label, wheel_r = CAR, rng.uniform(0.3, 0.36)
    reflect = rng.lognormal(0, 0.4)
    for off, plen, z0, h in parts:
        centre = np.array([x, y, z + z0 + h / 2]) + off * fwd
        w = width if off >= 0 or truck else width * 0.9
        p.add(BOX, centre, (plen / 2, w / 2, h / 2), label, reflect, r)
    for off in (0.32, -0.32):  # an axle cylinder spanning the width shows a wheel on each side
        centre = np.array([x, y, z + wheel_r]) + off * length * fwd
        p.add(CYLINDER, centre, (wheel_r, wheel_r, width / 2 - 0.02), label, reflect * 0.5, r @ rot_x(math.pi / 2))


def _pedestrian(p: PrimitiveList, rng, x, y, z) -> None:
    s, r = rng.uniform(0.85, 1.1), rot_z(rng.uniform(0, 2 * math.pi))
    reflect = rng.lognormal(0, 0.4)
    for side in (-0.1, 0.1):
        p.add(CYLINDER, np.array([x, y, z + 0.42 * s]) + side * r[:, 1], (0.07, 0.07, 0.42 * s), PED, reflect)
    p.add(ELLIPSOID, (x, y, z + 1.12 * s), (0.14 * s, 0.22 * s, 0.33 * s), PED, reflect, r)
    p.add(ELLIPSOID, (x, y, z + 1.58 * s), (0.1 * s, 0.1 * s, 0.12 * s), PED, reflect)


def build_street(rng: np.random.Generator, ego_x: tuple[float, float]) -> Street:
    """A random street along world x (road surface at z = 0) for a car driving from ego_x[0] to ego_x[1]."""
    p = PrimitiveList()
    hw, curb = rng.uniform(3.5, 7.5), rng.uniform(0.1, 0.18)
    park = {s: hw >= 5.0 and rng.random() < 0.8 for s in (-1, 1)}
    ego_y = -(hw - (2.2 if park[-1] else 0.0)) / 2
    x_lo, x_hi = ego_x[0] - 85, ego_x[1] + 85
    spans = [(x_lo, x_hi)]
    if rng.random() < 0.5:  # a crossing street
        xc, hw2 = rng.uniform(ego_x[0] + 15, ego_x[1] + 40), rng.uniform(3.5, 6.0)
        spans = [(x_lo, xc - hw2), (xc + hw2, x_hi)]
    for s in (-1, 1):
        sw, strip = rng.uniform(1.5, 4.0), (rng.uniform(1.0, 6.0) if rng.random() < 0.7 else 0.0)
        for xa, xb in spans:
            # The raised block: its top is sidewalk within `sw` of its edges and terrain inside; its sides are curbs.
            p.add(BOX, ((xa + xb) / 2, s * (hw + 35), curb / 2), ((xb - xa) / 2, 35, curb / 2), SIDEWALK,
                  rng.lognormal(0, 0.2), sidewalk=sw)
            x = xa + rng.uniform(0, 6)
            while x < xb - 4:  # buildings
                w = min(rng.uniform(8, 30), xb - x - 1)
                if rng.random() < 0.85:
                    depth, height = rng.uniform(8, 20), rng.uniform(4, 22)
                    y0 = hw + sw + strip + (rng.uniform(0, 3) if rng.random() < 0.3 else 0.0)
                    p.add(BOX, (x + w / 2, s * (y0 + depth / 2), curb + height / 2), (w / 2, depth / 2, height / 2),
                          MANMADE, rng.lognormal(0, 0.45))
                x += w + (0.0 if rng.random() < 0.4 else rng.uniform(2, 10))
            for x in np.arange(xa + rng.uniform(2, 12), xb - 2, rng.uniform(20, 35)):  # street lights
                h, yp = rng.uniform(5, 8), s * (hw + 0.4)
                p.add(CYLINDER, (x, yp, curb + h / 2), (0.11, 0.11, h / 2), MANMADE, rng.lognormal(0.3, 0.3))
                p.add(BOX, (x, yp - s * 0.8, curb + h), (0.08, 0.8, 0.06), MANMADE, rng.lognormal(0.3, 0.3))
            for x in np.arange(xa + rng.uniform(1, 8), xb - 1, rng.uniform(6, 15)):  # trees
                if rng.random() < 0.75:
                    yt = s * (hw + (sw - 0.7 if strip < 1.5 else sw + rng.uniform(0.6, strip - 0.6)))
                    th, tr = rng.uniform(1.8, 3.5), rng.uniform(0.12, 0.3)
                    rx, rz = rng.uniform(1.2, 3.0), rng.uniform(1.2, 3.0)
                    reflect = rng.lognormal(0, 0.35)
                    p.add(CYLINDER, (x, yt, curb + th / 2), (tr, tr, th / 2), VEGETATION, reflect)
                    p.add(ELLIPSOID, (x, yt, curb + th + 0.7 * rz), (rx, rx * rng.uniform(0.8, 1.2), rz), VEGETATION,
                          reflect)
            for _ in range(int(rng.poisson((xb - xa) / 12)) if strip >= 1.5 else 0):  # bushes
                rz = rng.uniform(0.3, 0.9)
                p.add(ELLIPSOID, (rng.uniform(xa, xb), s * (hw + sw + rng.uniform(0.5, strip - 0.3)), curb + 0.6 * rz),
                      (rng.uniform(0.4, 1.4), rng.uniform(0.4, 1.2), rz), VEGETATION, rng.lognormal(0, 0.35),
                      rot_z(rng.uniform(0, math.pi)))
            for _ in range(int(rng.poisson((xb - xa) / 25))):  # pedestrians on the sidewalk
                _pedestrian(p, rng, rng.uniform(xa + 1, xb - 1), s * (hw + rng.uniform(0.4, sw - 0.3)), curb)
            if rng.random() < 0.3:  # a line of barriers along the sidewalk edge
                x0, yb = rng.uniform(xa, xb - 12), s * (hw + rng.uniform(0.3, max(0.4, sw - 0.5)))
                for k in range(int(rng.integers(3, 9))):
                    length = rng.uniform(1.2, 2.0)
                    p.add(BOX, (x0 + k * (length + 0.15), yb, curb + 0.5), (length / 2, 0.25, 0.5), BARRIER,
                          rng.lognormal(0, 0.4))
            if park[s]:  # parked cars and trucks along the curb
                x = xa + rng.uniform(1, 4)
                while x < xb - 6:
                    slot = rng.uniform(4.8, 6.5)
                    if rng.random() < 0.65:
                        truck = rng.random() < 0.15
                        yaw = rng.choice([0, math.pi]) + rng.normal(0, 0.03)
                        _vehicle(p, rng, x + slot / 2, s * (hw - 1.15), 0.0, yaw, truck)
                        slot += 5.0 if truck else 0.0
                    x += slot
    lane_far = (hw - (2.2 if park[1] else 0.0)) / 2  # the opposite lane's centre
    for _ in range(int(rng.integers(0, 5))):
        _vehicle(p, rng, rng.uniform(x_lo + 20, x_hi - 20), lane_far + rng.normal(0, 0.2), 0.0,
                 math.pi + rng.normal(0, 0.02), rng.random() < 0.2)
    for _ in range(int(rng.integers(0, 3))):  # traffic in the sensor's own lane, well ahead or behind
        x = rng.choice([ego_x[0] - rng.uniform(10, 40), ego_x[1] + rng.uniform(10, 40)])
        _vehicle(p, rng, x, ego_y + rng.normal(0, 0.2), 0.0, rng.normal(0, 0.02), rng.random() < 0.2)
    if rng.random() < 0.7:  # traffic cones along the centre line
        x0, gap = rng.uniform(ego_x[0] - 20, ego_x[1] + 30), rng.uniform(1.5, 4.0)
        for k in range(int(rng.integers(3, 11))):
            xk, yk, reflect = x0 + k * gap, rng.normal(0, 0.1), rng.lognormal(0, 0.4)
            p.add(BOX, (xk, yk, 0.015), (0.19, 0.19, 0.015), CONE, reflect)
            for j, rad in enumerate((0.14, 0.1, 0.06)):
                p.add(CYLINDER, (xk, yk, 0.03 + 0.1 + 0.2 * j), (rad, rad, 0.1), CONE, reflect * (1.8 if j == 1 else 1))
    return Street(p.freeze(), hw, ego_y)
