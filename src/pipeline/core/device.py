"""The compute device: `pick_device('auto')` -> cuda, then mps, then cpu."""
from __future__ import annotations

def pick_device(pref: str = "auto") -> str:
    """'auto' -> cuda, then mps, then cpu; an explicit device must be available."""
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if pref == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if pref.startswith("cuda") and not cuda:
        raise ValueError(f"device {pref!r} requested but CUDA is not available; use runtime.device=auto or cpu")
    if pref == "mps" and not mps:
        raise ValueError("device 'mps' requested but MPS is not available; use runtime.device=auto or cpu")
    if pref not in ("cpu", "mps") and not pref.startswith("cuda"):
        raise ValueError(f"unknown device {pref!r}; expected auto, cpu, cuda[:n] or mps")
    return pref
