"""Annotation geometry, written once: areas, boxes, clipping to the image, LabelMe shapes as regions.

A manifest annotation is one polygon ring `[[x, y], ...]` in image pixels. Every LabelMe shape
type becomes such a region with its real area (`shape_polygons`):

| shape_type | points | region |
|---|---|---|
| polygon | >= 3 | kept as drawn; the audit repairs a self-intersecting one (make_valid) and clips it |
| rectangle | 2 opposite corners (or 4 corners) | the box |
| circle | centre, a point on the rim | a 64-gon disc |
| ellipse | centre + the ends of both semi-axes (3), or 2 box corners | a 64-gon ellipse |
| line, linestrip | 2 / >= 2 | the stroke buffered by LINE_HALF_WIDTH_PX on each side |
| point, points | >= 1 | a disc of POINT_RADIUS_PX around each point |

Lines and points have no area of their own; they are what an annotator draws for a scratch or a
chip, so they become small regions (reported in the audit as buffered shapes) rather than being
dropped. Other types (e.g. `mask`) raise `ShapeError("unsupported_shape")`.
"""
from __future__ import annotations

import math

import shapely
import shapely.affinity
import shapely.geometry.polygon
from shapely.geometry import LineString, MultiPoint, Point, Polygon, box
from shapely.geometry.base import BaseGeometry

BoxF = tuple[float, float, float, float]
BoxI = tuple[int, int, int, int]
Ring = list[list[float]]

LINE_HALF_WIDTH_PX = 3.0  # a line / linestrip becomes a stroke 6 px wide
POINT_RADIUS_PX = 5.0  # a point becomes a disc of this radius
QUAD_SEGS = 16  # segments per quarter circle of discs, ellipses and round caps
DECIMALS = 2  # coordinates of computed rings are rounded to 0.01 px (stable manifests)
BUFFERED_TYPES = frozenset({"line", "linestrip", "point", "points"})


class ShapeError(ValueError):
    """A shape that gives no region: `reason` is a quarantine reason, `detail` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


# -- boxes ---------------------------------------------------------------------------------------


def polygon_box(points: Ring) -> BoxF:
    """(x0, y0, x1, y1) of a list of points."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


def box_area(b: BoxF) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def intersection(a: BoxF, b: BoxF) -> float:
    """Area of the overlap of two boxes (0 when they only touch)."""
    return box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


# -- polygons ------------------------------------------------------------------------------------


def polygon_area(points: Ring) -> float:
    """Area of the polygon ring (0 below 3 points). Equals the shoelace area for a simple polygon."""
    if len(points) < 3:
        return 0.0
    return float(Polygon(points).area)


def polygonal(geom: BaseGeometry) -> list[Polygon]:
    """The polygons with area inside a geometry (collections flattened; points and lines dropped)."""
    parts = getattr(geom, "geoms", [geom])
    out: list[Polygon] = []
    for g in parts:
        if isinstance(g, Polygon):
            if not g.is_empty and g.area > 0:
                out.append(g)
        elif hasattr(g, "geoms"):
            out.extend(polygonal(g))
    return out


def valid_parts(points: Ring) -> list[Polygon]:
    """The ring as valid polygons: itself when simple, else the pieces of shapely's make_valid."""
    if len(points) < 3:
        return []
    poly = Polygon(points)
    if poly.is_valid:
        return [poly] if poly.area > 0 else []
    return polygonal(shapely.make_valid(poly))


def ring(poly: Polygon) -> Ring:
    """The exterior ring of a polygon (counter-clockwise in x-right/y-up terms: positive shoelace sum),
    without the closing point, rounded to DECIMALS."""
    coords = list(shapely.geometry.polygon.orient(poly, sign=1.0).exterior.coords)[:-1]
    return [[round(float(x), DECIMALS), round(float(y), DECIMALS)] for x, y in coords]


def clip_to_image(parts: list[Polygon], width: float, height: float) -> list[Polygon]:
    """The pieces of `parts` inside [0, width] x [0, height] (a concave polygon may give several)."""
    frame = box(0.0, 0.0, float(width), float(height))
    return [p for part in parts for p in polygonal(part.intersection(frame))]


def inside_image(points: Ring, width: float, height: float) -> bool:
    return all(0 <= x <= width and 0 <= y <= height for x, y in points)


def clipped_extent(points: Ring, width: float, height: float) -> tuple[BoxF, float] | None:
    """(box, area) of the part of the polygon inside [0, width] x [0, height]; None when nothing is."""
    pieces = clip_to_image(valid_parts(points), width, height)
    if not pieces:
        return None
    union = shapely.union_all(pieces)
    return tuple(float(v) for v in union.bounds), float(union.area)  # type: ignore[return-value]


# -- LabelMe shapes ------------------------------------------------------------------------------


def _ellipse(points: Ring) -> Polygon:
    if len(points) == 2:
        (x0, y0), (x1, y1) = points
        cx, cy, rx, ry, angle = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2, 0.0
    elif len(points) == 3:
        (cx, cy), (ax, ay), (bx, by) = points
        rx, ry = math.dist((cx, cy), (ax, ay)), math.dist((cx, cy), (bx, by))
        angle = math.degrees(math.atan2(ay - cy, ax - cx))
    else:
        raise ShapeError("malformed_annotation", f"ellipse needs 2 or 3 points, got {len(points)}")
    if rx <= 0 or ry <= 0:
        raise ShapeError("degenerate_polygon", "ellipse with a zero axis")
    unit = Point(0.0, 0.0).buffer(1.0, quad_segs=QUAD_SEGS)
    scaled = shapely.affinity.scale(unit, rx, ry, origin=(0, 0))
    return shapely.affinity.translate(shapely.affinity.rotate(scaled, angle, origin=(0, 0)), cx, cy)


def _need(shape_type: str, points: Ring, ok: bool, expected: str) -> None:
    if not ok:
        raise ShapeError("malformed_annotation", f"{shape_type} needs {expected}, got {len(points)} points")


def shape_region(shape_type: str, points: Ring) -> BaseGeometry:
    """The region a LabelMe shape covers (see the module table); raises ShapeError."""
    st = shape_type or "polygon"
    if st == "polygon":
        if len(points) < 3:
            raise ShapeError("degenerate_polygon", f"polygon with {len(points)} points")
        return shapely.make_valid(Polygon(points))
    if st == "rectangle":
        _need(st, points, len(points) in (2, 4), "2 corners (or 4)")
        if len(points) == 4:
            return shapely.make_valid(Polygon(points))
        (x0, y0), (x1, y1) = points
        return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    if st == "circle":
        _need(st, points, len(points) == 2, "a centre and a rim point")
        radius = math.dist(points[0], points[1])
        return Point(points[0]).buffer(radius, quad_segs=QUAD_SEGS) if radius > 0 else Polygon()
    if st == "ellipse":
        return _ellipse(points)
    if st in ("line", "linestrip"):
        _need(st, points, len(points) >= 2, ">= 2 points")
        return LineString(points).buffer(LINE_HALF_WIDTH_PX, quad_segs=QUAD_SEGS)
    if st in ("point", "points"):
        _need(st, points, len(points) >= 1, ">= 1 point")
        return MultiPoint(points).buffer(POINT_RADIUS_PX, quad_segs=QUAD_SEGS)
    raise ShapeError("unsupported_shape", f"shape_type {shape_type!r} has no region this pipeline can use")


def shape_rings(shape_type: str, points: Ring) -> list[Ring]:
    """The region of a LabelMe shape as polygon rings (one per piece); a polygon keeps its points as drawn.

    Raises ShapeError when the shape gives no region (too few points, zero area, unsupported type).
    """
    st = shape_type or "polygon"
    if st == "polygon":  # kept as drawn: the audit repairs, clips and area-checks rings against the image
        if len(points) < 3:
            raise ShapeError("degenerate_polygon", f"polygon with {len(points)} points")
        return [[[float(x), float(y)] for x, y in points]]
    if st == "rectangle" and len(points) == 2:
        (x0, x1), (y0, y1) = sorted(float(p[0]) for p in points), sorted(float(p[1]) for p in points)
        if x1 > x0 and y1 > y0:
            return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1]]]
    pieces = polygonal(shape_region(st, points))
    if not pieces:
        raise ShapeError("degenerate_polygon", f"{st} with {len(points)} points covers no area")
    return [ring(p) for p in pieces]
