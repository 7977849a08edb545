"""An embedder's image views: the global view (and its mirror with `tta: [hflip]`), then with
`multi_patch` the sliding windows of the model input size over an image larger than it (stride half).
`Preprocess` is picklable: DataLoader workers run it."""
from __future__ import annotations

from typing import Any, Callable, Sequence


def patch_boxes(width: int, height: int, size: int) -> list[tuple[int, int, int, int]]:
    """Sliding windows of `size` (clipped to the image), stride size // 2; [] if the image fits."""
    if max(width, height) <= size:
        return []

    def starts(extent: int) -> list[int]:
        if extent <= size:
            return [0]
        step = max(1, size // 2)
        out = list(range(0, extent - size + 1, step))
        if out[-1] != extent - size:
            out.append(extent - size)
        return out

    pw, ph = min(size, width), min(size, height)
    return [(x, y, x + pw, y + ph) for y in starts(height) for x in starts(width)]


class Preprocess:
    """Picklable image -> tensor (n_views, C, H, W): the global view (and its mirror with tta hflip), then
    patches if multi_patch."""

    def __init__(self, transform: Callable[[Any], Any], size: int, multi_patch: bool, tta: Sequence[str] = ()) -> None:
        self.transform = transform
        self.size = size
        self.multi_patch = multi_patch
        self.tta = tuple(tta)

    @property
    def n_global(self) -> int:
        """Views of the whole image that are averaged into the global vector."""
        return 1 + ("hflip" in self.tta)

    def __call__(self, img: Any) -> Any:
        import torch
        from PIL import Image

        img = img.convert("RGB") if img.mode != "RGB" else img
        views = [self.transform(img)]
        if "hflip" in self.tta:
            views.append(self.transform(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
        if self.multi_patch:
            views += [self.transform(img.crop(b)) for b in patch_boxes(img.width, img.height, self.size)]
        return torch.stack(views)
