"""Annotation checks of the audit, against the decoded image size (geometry in core/geometry.py).

Per annotation ring: fewer than 3 points or an area below `audit.min_polygon_area` ->
`degenerate_polygon`; a self-intersecting ring is repaired (shapely make_valid: a bow-tie becomes
its two triangles, each kept as an annotation); a ring crossing the image border is clipped to
the image (each piece inside kept; a concave ring may give several) when `audit.clip_polygons`,
and one entirely outside -> `polygon_outside_image`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from pipeline.core.config import AuditConfig
from pipeline.core.geometry import clip_to_image, inside_image, ring, valid_parts
from pipeline.data.manifest import Annotation


@dataclass
class AnnotationCheck:
    kept: list[Annotation]
    dropped: list[tuple[str, str]]  # (reason, detail)
    n_clipped: int = 0  # annotations cut at the image border
    n_repaired: int = 0  # self-intersecting rings split into valid pieces


def _pieces(ann: Annotation, parts: list) -> list[Annotation]:
    return [replace(ann, points=ring(p)) for p in parts]


def check_annotations(anns: list[Annotation], width: int, height: int, cfg: AuditConfig) -> AnnotationCheck:
    """Valid annotations (repaired, clipped when cfg.clip_polygons) and the dropped ones with reasons."""
    out = AnnotationCheck([], [])
    for i, ann in enumerate(anns):
        tag = f"{ann.kind} {ann.label!r} #{i} ({ann.shape_type})"
        if len(ann.points) < 3:
            out.dropped.append(("degenerate_polygon", f"{tag}: {len(ann.points)} points"))
            continue
        parts = valid_parts(ann.points)
        area = sum(p.area for p in parts)
        if area <= 0 or area < cfg.min_polygon_area:
            out.dropped.append(("degenerate_polygon", f"{tag}: area {area:g} < min_polygon_area {cfg.min_polygon_area:g}"))
            continue
        simple = len(parts) == 1 and parts[0].exterior.coords[:-1] == [tuple(p) for p in ann.points]
        out.n_repaired += not simple
        if inside_image(ann.points, width, height):
            out.kept.extend([ann] if simple else _pieces(ann, parts))
            continue
        clipped = clip_to_image(parts, width, height)
        inside = sum(p.area for p in clipped)
        if not clipped:
            out.dropped.append(("polygon_outside_image", f"{tag}: entirely outside the {width}x{height} image"))
        elif inside < cfg.min_polygon_area:
            out.dropped.append(("degenerate_polygon", f"{tag}: area {inside:g} inside the image < min_polygon_area"))
        elif cfg.clip_polygons:
            out.kept.extend(_pieces(ann, clipped))
            out.n_clipped += 1
        else:
            out.kept.extend([ann] if simple else _pieces(ann, parts))
    return out
