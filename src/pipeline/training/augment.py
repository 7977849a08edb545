"""Train / val transforms of the recipe, timm Mixup/CutMix, and an optional saliency smart crop.

Train: [smart crop] -> resize the short side to round(image_size * resize_ratio) -> random crop
image_size (or a random-resized crop when crop_scale < 1) -> flips -> rotation -> colour jitter
-> Gaussian blur with probability blur_p -> tensor -> mean/std. Val: `models.classifier.val_transform`
(resize, centre crop, mean/std). Random draws come from torch's generator, so a seeded run
repeats exactly.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.config import AugmentConfig, PhaseTrainConfig
from pipeline.models.classifier import val_transform


def resize_size(image_size: int, aug: AugmentConfig) -> int:
    return int(round(image_size * aug.resize_ratio))


def spectral_residual_saliency(gray: np.ndarray) -> np.ndarray:
    """Saliency map (Hou & Zhang 2007) of a 2-D float image, same shape, values >= 0."""
    import cv2

    small = cv2.resize(gray.astype(np.float32), (64, 64), interpolation=cv2.INTER_AREA)
    spectrum = np.fft.fft2(small)
    log_amp = np.log(np.abs(spectrum) + 1e-8)
    residual = log_amp - cv2.blur(log_amp.astype(np.float32), (3, 3))
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    sal = cv2.GaussianBlur(sal.astype(np.float32), (9, 9), 2.5)
    return cv2.resize(sal, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)


class SmartCrop:
    """The largest square centred (as far as the image allows) on the saliency centroid."""

    def __call__(self, image: Any) -> Any:
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        sal = spectral_residual_saliency(gray)
        total = float(sal.sum())
        h, w = gray.shape
        side = min(h, w)
        if total <= 0 or side == max(h, w):
            return image
        cy = float((sal.sum(axis=1) * np.arange(h)).sum() / total)
        cx = float((sal.sum(axis=0) * np.arange(w)).sum() / total)
        x0 = int(min(max(cx - side / 2, 0), w - side))
        y0 = int(min(max(cy - side / 2, 0), h - side))
        return image.crop((x0, y0, x0 + side, y0 + side))


def train_transform(aug: AugmentConfig, image_size: int, mean: Any, std: Any) -> Any:
    from torchvision import transforms as T

    steps: list[Any] = [SmartCrop()] if aug.smart_crop else []
    steps.append(T.Resize(resize_size(image_size, aug), interpolation=T.InterpolationMode.BICUBIC, antialias=True))
    if tuple(aug.crop_scale) == (1.0, 1.0):
        steps.append(T.RandomCrop(image_size))
    else:
        steps.append(T.RandomResizedCrop(image_size, scale=tuple(aug.crop_scale), antialias=True))
    if aug.hflip > 0:
        steps.append(T.RandomHorizontalFlip(aug.hflip))
    if aug.vflip > 0:
        steps.append(T.RandomVerticalFlip(aug.vflip))
    if aug.rotation > 0:
        steps.append(T.RandomRotation(aug.rotation, interpolation=T.InterpolationMode.BILINEAR))
    if any(aug.color_jitter):
        b, c, s, h = aug.color_jitter
        steps.append(T.ColorJitter(b, c, s, h))
    if aug.blur_p > 0:
        kernel = max(3, (image_size // 32) | 1)
        steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=aug.blur_p))
    steps += [T.ToTensor(), T.Normalize(list(mean), list(std))]
    return T.Compose(steps)


def eval_transform(aug: AugmentConfig, image_size: int, mean: Any, std: Any) -> Any:
    return val_transform(image_size, resize_size(image_size, aug), mean, std)


def norm_stats(aug: AugmentConfig, pretrained_cfg: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(mean, std): the config's when set, else the model's pretrained cfg, else ImageNet's."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    mean = aug.mean or pretrained_cfg.get("mean") or IMAGENET_DEFAULT_MEAN
    std = aug.std or pretrained_cfg.get("std") or IMAGENET_DEFAULT_STD
    return [float(m) for m in mean], [float(s) for s in std]


def make_mixup(recipe: PhaseTrainConfig, num_classes: int) -> Any | None:
    """timm Mixup/CutMix (with the recipe's label smoothing) or None when both alphas are 0."""
    if recipe.mixup_alpha <= 0 and recipe.cutmix_alpha <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha, prob=recipe.mixup_prob,
                 switch_prob=recipe.mixup_switch_prob, label_smoothing=recipe.label_smoothing,
                 num_classes=num_classes)
