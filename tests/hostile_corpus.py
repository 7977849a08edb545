"""A corpus of hostile dataset inputs, one dataset root per format, and what the audit must make of each.

`build(base)` writes `base/<format>/root/` (the datasets) and `base/outside/` (decoys every escape points
at; nothing may ever open them) and returns the kinds: `Kind(name, fmt, expect)` where `expect` maps each
of the kind's paths (relative to its root) to `accepted`, a file-level quarantine reason, or
`accepted+<reason>` (kept, with a shape-level row of that reason). Used by tests/test_hostile_inputs.py and
bench/hostile_inputs.py (which prints the table).

The audit runs with small bounds so the costly kinds stay cheap to build: AUDIT below.
"""
from __future__ import annotations

import io
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TS = "20240131T120000"
BOX = [[10, 10], [90, 10], [90, 90], [10, 90]]
# the audit's bounds for this corpus: a 6000x6000 image needs more than 64 MB; annotation files over 8 MB
AUDIT = {"min_side": 32, "workers": 2, "max_memory_mb": 64, "max_annotation_bytes": 8 * 1024 * 1024,
         "max_shape_points": 100_000}


# GIFs are no default image extension: this corpus adds it, as a user with GIFs would
EXTENSIONS = [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"]


@dataclass
class Kind:
    name: str
    fmt: str
    expect: dict[str, str]


def _img(seed: int, size: tuple[int, int] = (120, 96)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB").resize(size, Image.BICUBIC)


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path.name


def _stem(seed: int, state: str = "ko") -> str:
    return f"zona1_{state}_1_2_{TS}{seed}_zona_3"


def _labelme_doc(shapes: list, image_path: str = "x.jpg") -> dict:
    return {"version": "5.2.1", "flags": {}, "shapes": shapes, "imagePath": image_path, "imageData": None}


def _shape(points: object, label: str = "2") -> dict:
    return {"label": label, "points": points, "shape_type": "polygon", "flags": {}}


# -- bombs: a small file whose header claims a huge image --------------------------------------
def png_bomb(width: int, height: int) -> bytes:
    raw = _bytes(Image.new("L", (1, 1)), "PNG")
    ihdr = bytearray(raw[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return raw[:16] + bytes(ihdr) + crc + raw[33:]


def gif_bomb(width: int, height: int) -> bytes:
    raw = bytearray(_bytes(Image.new("P", (1, 1)), "GIF"))
    raw[6:10] = struct.pack("<HH", width, height)  # logical screen
    at = raw.index(0x2C, 13)  # image descriptor: left, top, width, height
    raw[at + 5:at + 9] = struct.pack("<HH", width, height)
    return bytes(raw)


def tiff_bomb(width: int, height: int) -> bytes:
    raw = bytearray(_bytes(Image.new("L", (1, 1)), "TIFF"))
    ifd = struct.unpack("<I", raw[4:8])[0]
    for i in range(struct.unpack("<H", raw[ifd:ifd + 2])[0]):
        at = ifd + 2 + 12 * i
        tag, typ = struct.unpack("<HH", raw[at:at + 4])
        if tag in (256, 257):
            value = width if tag == 256 else height
            raw[at + 8:at + 12] = struct.pack("<I", value) if typ == 4 else struct.pack("<HH", value, 0)
    return bytes(raw)


# -- the formats ---------------------------------------------------------------------------------
def _labelme(root: Path, outside: Path) -> list[Kind]:
    kinds: list[Kind] = []
    seed = iter(range(100, 1000))

    def photo(name: str, label_doc: dict | bytes | str | None, state: str = "ko", img: bytes | None = None,
              expect_photo: str = "accepted", expect_label: str | None = None) -> None:
        s = next(seed)
        stem = _stem(s, state)
        image = f"{stem}_imageDANO_original.jpg"
        _write(root / image, img if img is not None else _bytes(_img(s), "JPEG", quality=90))
        expect = {image: expect_photo}
        if label_doc is not None:
            label = f"{stem}_labelDANO_modificado.json"
            data = json.dumps(label_doc) if isinstance(label_doc, dict) else label_doc
            _write(root / label, data)
            expect[label] = expect_label or ("accepted" if expect_photo.startswith("accepted") else expect_photo)
        kinds.append(Kind(name, "labelme", expect))

    secret = outside / "secret.jpg"
    photo("LabelMe imagePath ../../ (never used)", _labelme_doc([_shape(BOX)], "../../outside/secret.jpg"))
    photo("LabelMe imagePath absolute (never used)", _labelme_doc([_shape(BOX)], str(secret)))
    photo("LabelMe imagePath Windows drive (never used)", _labelme_doc([_shape(BOX)], "C:\\Users\\x\\secret.jpg"))
    photo("LabelMe JSON not UTF-8", b'{"shapes": [], "imagePath": "\xe9t\xe9.jpg"}', expect_photo="missing_annotation",
          expect_label="malformed_annotation")
    photo("LabelMe JSON nested 100,000 deep", "[" * 100_000 + "]" * 100_000, expect_photo="missing_annotation",
          expect_label="malformed_annotation")
    photo("LabelMe JSON zero bytes", b"", expect_photo="missing_annotation", expect_label="malformed_annotation")
    photo("LabelMe NaN coordinates", '{"shapes": [{"label": "2", "points": [[NaN, 1], [5, 5], [1, 9]]}]}',
          expect_photo="no_valid_annotation")
    photo("LabelMe Infinity coordinates", '{"shapes": [{"label": "2", "points": [[Infinity, 1], [5, 5], [1, 9]]}]}',
          expect_photo="no_valid_annotation")
    photo("LabelMe coordinates of 1e300", _labelme_doc([_shape([[0, 0], [1e300, 0], [1e300, 1e300], [0, 1e300]])]))
    million = '{"shapes": [{"label": "2", "points": [' + ",".join(["[1,1]"] * 1_000_000) + \
              ']}, {"label": "2", "points": [[10,10],[90,10],[90,90],[10,90]]}]}'
    photo("LabelMe million-point polygon (beside a valid one)", million, expect_photo="accepted+too_costly")
    # a huge annotation file: sparse, over the bound: never opened
    s = next(seed)
    image = f"{_stem(s)}_imageDANO_original.jpg"
    _write(root / image, _bytes(_img(s), "JPEG", quality=90))
    huge = root / f"{_stem(s)}_labelDANO_modificado.json"
    with open(huge, "wb") as fh:
        fh.write(b'{"shapes": [')
        fh.truncate(16 * 1024 * 1024)
    kinds.append(Kind("LabelMe JSON of 16 MB (bound 8 MB)", "labelme",
                      {image: "missing_annotation", huge.name: "too_costly"}))
    # links out of the root
    s = next(seed)
    link = root / f"{_stem(s, 'ok')}_imageDANO_original.jpg"
    os.symlink(secret, link)
    kinds.append(Kind("symlink to an image outside the root", "labelme", {link.name: "path_escape"}))
    os.symlink(outside, root / "linked_folder")
    kinds.append(Kind("symlinked folder outside the root", "labelme", {"linked_folder": "path_escape"}))
    s = next(seed)
    hard = root / f"{_stem(s, 'ok')}_imageDANO_original.jpg"
    os.link(outside / "hard_target.jpg", hard)
    kinds.append(Kind("hard link to a file outside the root (read through its path in the root)", "labelme",
                      {hard.name: "accepted"}))
    # names
    s = next(seed)
    nl = f"{_stem(s, 'ok')}_imageDANO\n_original.jpg"
    _write(root / nl, _bytes(_img(s), "JPEG"))
    kinds.append(Kind("file name with a newline", "labelme", {nl: "bad_filename"}))
    s = next(seed)
    esc = f"{_stem(s, 'ok')}_imageDANO_original\x1b[31m.jpg"
    _write(root / esc, _bytes(_img(s), "JPEG"))
    kinds.append(Kind("file name with a terminal escape", "labelme", {esc: "bad_filename"}))
    s = next(seed)
    long_ts = "9" * (255 - len(_stem(0)) - len("_imageDANO_original.jpg") + len(f"{TS}0"))
    long_name = f"zona1_ko_1_2_{long_ts}_zona_3_imageDANO_original.jpg"
    assert len(long_name.encode()) == 255, len(long_name)
    _write(root / long_name, _bytes(_img(s), "JPEG"))
    kinds.append(Kind("255-byte LabelMe photo name (its label file cannot exist)", "labelme",
                      {long_name: "missing_annotation"}))
    raw = os.fsdecode(f"{_stem(next(seed), 'ok')}_imageDANO_original\xff.jpg".encode("latin-1"))
    _write(root / raw, _bytes(_img(next(seed)), "JPEG"))
    shown = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    kinds.append(Kind("file name that is not UTF-8", "labelme", {shown: "bad_filename"}))
    fifo = f"{_stem(next(seed), 'ok')}_imageDANO_original.jpg"
    os.mkfifo(root / fifo)
    kinds.append(Kind("a FIFO named like a photo (a reader would block)", "labelme", {fifo: "unsupported_file"}))
    return kinds


def _folders(root: Path, outside: Path) -> list[Kind]:
    kinds: list[Kind] = []
    seed = iter(range(2000, 3000))

    def one(name: str, rel: str, data: bytes, expect: str) -> None:
        _write(root / rel, data)
        kinds.append(Kind(name, "folders", {rel: expect}))

    jpeg = _bytes(_img(next(seed)), "JPEG", quality=90)
    png = _bytes(_img(next(seed)), "PNG")
    one("image of zero bytes", "dent/zero.jpg", b"", "decode_error")
    one("truncated JPEG", "dent/truncated.jpg", jpeg[: len(jpeg) // 2], "decode_error")
    one("truncated PNG", "dent/truncated.png", png[: len(png) // 2], "decode_error")
    one("polyglot: a JPEG with a ZIP appended (a valid image)", "dent/polyglot.jpg",
        _bytes(_img(next(seed)), "JPEG") + b"PK\x03\x04" + b"\x00" * 26 + b"payload", "accepted")
    one("polyglot: HTML in a GIF header", "dent/polyglot.gif", b"GIF89a<html><script>alert(1)</script></html>",
        "decode_error")
    one("PNG decompression bomb (60000 x 60000 header)", "dent/bomb.png", png_bomb(60000, 60000), "decompression_bomb")
    one("GIF decompression bomb (65535 x 65535 header)", "dent/bomb.gif", gif_bomb(65535, 65535), "decompression_bomb")
    one("TIFF decompression bomb (60000 x 60000 header)", "dent/bomb.tif", tiff_bomb(60000, 60000), "decompression_bomb")
    frames = [_img(next(seed)).convert("P") for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    one("animated GIF (first frame used)", "dent/animated.gif", buf.getvalue(), "accepted")
    pages = [_img(next(seed)) for _ in range(3)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    one("multi-page TIFF (first page used)", "dent/pages.tif", buf.getvalue(), "accepted")
    arr = (np.asarray(_img(next(seed)).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    one("16-bit grayscale PNG", "dent/sixteen.png", _bytes(Image.fromarray(arr), "PNG"), "accepted")
    one("CMYK JPEG", "dent/cmyk.jpg", _bytes(_img(next(seed)).convert("CMYK"), "JPEG"), "accepted")
    big = _bytes(Image.new("RGB", (6000, 6000), (40, 90, 160)), "PNG")
    one("6000 x 6000 image needing more memory than the bound (too_costly)", "dent/memory.png", big, "too_costly")
    long_name = "dent/" + "n" * 251 + ".jpg"
    one("255-byte file name (a valid image)", long_name, _bytes(_img(next(seed)), "JPEG"), "accepted")
    one("a JSON file among the images", "dent/notes.json", b'{"a": 1}', "unsupported_file")
    os.symlink(outside / "secret.jpg", root / "dent" / "escape.jpg")
    kinds.append(Kind("symlink in a class folder to an image outside the root", "folders", {"dent/escape.jpg": "path_escape"}))
    return kinds


def _coco(root: Path, outside: Path) -> list[Kind]:
    kinds: list[Kind] = []
    for i in range(3):
        _write(root / f"img{i}.jpg", _bytes(_img(3000 + i), "JPEG", quality=90))
    images = [{"id": i, "file_name": f"img{i}.jpg"} for i in range(3)]
    images += [{"id": 10, "file_name": "../outside/secret.jpg"}, {"id": 11, "file_name": str(outside / "secret.jpg")},
               {"id": 12, "file_name": "C:\\data\\secret.jpg"}, {"id": 13, "file_name": "gone.jpg"}]
    flat = [v for p in BOX for v in p]
    anns = [{"id": 1, "image_id": 0, "category_id": 6, "segmentation": [flat]},
            {"id": 2, "image_id": 1, "category_id": 99, "segmentation": [flat]},
            {"id": 3, "image_id": 777, "category_id": 6, "segmentation": [flat]},
            {"id": 4, "image_id": 2, "category_id": 6, "segmentation": [[float("nan")] * 6]}]
    cats = [{"id": 6, "name": "damage", "supercategory": "damage"}]
    doc = {"images": images, "annotations": anns, "categories": cats}
    _write(root / "annotations.json", json.dumps(doc))
    kinds += [
        Kind("COCO file_name ../ outside the root", "coco", {"../outside/secret.jpg": "path_escape"}),
        Kind("COCO file_name absolute", "coco", {str(outside / "secret.jpg"): "path_escape"}),
        Kind("COCO file_name with a Windows drive", "coco", {"C:\\data\\secret.jpg": "path_escape"}),
        Kind("COCO image record naming a missing file", "coco", {"gone.jpg": "missing_file"}),
        Kind("COCO annotation of a missing image id", "coco", {"annotations.json:annotations[2]": "bad_record"}),
        Kind("COCO annotation of a missing category", "coco", {"img1.jpg": "accepted+unknown_label"}),
        Kind("COCO segmentation with NaN", "coco", {"img2.jpg": "accepted+malformed_annotation"}),
        Kind("COCO image with a valid damage polygon", "coco", {"img0.jpg": "accepted", "annotations.json": "accepted"}),
    ]
    _write(root / "sub" / "annotations.json", "[" * 100_000 + "]" * 100_000)
    kinds.append(Kind("COCO annotations.json nested 100,000 deep", "coco", {"sub/annotations.json": "malformed_annotation"}))
    return kinds


def _jsonl(root: Path, outside: Path) -> list[Kind]:
    _write(root / "images" / "ok.jpg", _bytes(_img(4000), "JPEG", quality=90))
    records = [{"path": "images/ok.jpg", "label": "dent"},
               {"path": "../outside/secret.jpg", "label": "dent"},
               {"path": str(outside / "secret.jpg"), "label": "dent"},
               {"path": "C:\\Users\\x\\secret.jpg", "label": "dent"},
               {"path": "images/../../outside/secret.jpg", "label": "dent"},
               {"url": "http://169.254.169.254/latest/meta-data", "label": "dent"},
               {"path": "images/ok\nforged.jpg", "label": "dent"}]
    lines = [json.dumps(r) for r in records] + ["[" * 100_000 + "]" * 100_000, "{not json"]
    _write(root / "manifest.jsonl", "\n".join(lines) + "\n")
    return [
        Kind("JSONL record inside the root", "jsonl", {"images/ok.jpg": "accepted", "manifest.jsonl": "accepted"}),
        Kind("JSONL path ../ outside the root", "jsonl", {"../outside/secret.jpg": "path_escape"}),
        Kind("JSONL path absolute", "jsonl", {str(outside / "secret.jpg"): "path_escape"}),
        Kind("JSONL path with a Windows drive", "jsonl", {"C:\\Users\\x\\secret.jpg": "path_escape"}),
        Kind("JSONL path climbing out through a folder", "jsonl", {"images/../../outside/secret.jpg": "path_escape"}),
        Kind("JSONL URL to a metadata service", "jsonl", {"http://169.254.169.254/latest/meta-data": "url_not_fetchable"}),
        Kind("JSONL path with a newline", "jsonl", {"manifest.jsonl:7": "bad_record"}),
        Kind("JSONL line nested 100,000 deep", "jsonl", {"manifest.jsonl:8": "bad_record"}),
        Kind("JSONL line that is not JSON", "jsonl", {"manifest.jsonl:9": "bad_record"}),
    ]


BUILDERS = {"labelme": _labelme, "folders": _folders, "coco": _coco, "jsonl": _jsonl}


def build(base: Path) -> tuple[dict[str, Path], Path, list[Kind]]:
    """({format: dataset root}, the decoy folder outside every root, the kinds)."""
    outside = base / "outside"
    _write(outside / "secret.jpg", _bytes(_img(9), "JPEG"))
    _write(outside / "hard_target.jpg", _bytes(_img(10), "JPEG"))
    roots, kinds = {}, []
    for fmt, builder in BUILDERS.items():
        roots[fmt] = base / fmt / "root"
        roots[fmt].mkdir(parents=True)
        kinds += builder(roots[fmt], outside)
    return roots, outside, kinds


def outcomes(manifest: list[dict], quarantine: list[dict]) -> dict[str, str]:
    """What the audit made of every path: accepted / accepted+<shape reason> / a file-level reason."""
    out = {}
    for row in manifest:
        for p in (row["path"], row["annotation_path"], *(row["extra_paths"] or [])):
            if p:
                out[p] = "accepted"
    for q in quarantine:
        if q["level"] == "file":
            out[q["path"]] = q["reason"]
        elif out.get(q["path"]) == "accepted":
            out[q["path"]] = f"accepted+{q['reason']}"
    return out
