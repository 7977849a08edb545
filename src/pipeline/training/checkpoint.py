"""The training loop's checkpoints: the model as safetensors, and `last/state.pt` with the optimizer,
scheduler, scaler and loop state (tensors and plain values, read back with weights_only=True); every
file written through a temporary file and renamed into place."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def state_save(model: Any, path: Path) -> None:
    """The model's weights as safetensors at `path`."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def save_checkpoint(ckpt: Path, model: Any, opt: Any, sched: Any, scaler: Any, extra: dict[str, Any]) -> None:
    import torch

    last = ckpt / "last"
    state_save(model, last / "model.safetensors")
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else {}, **extra}
    tmp = last / "state.tmp"
    torch.save(state, tmp)
    os.replace(tmp, last / "state.pt")


def load_checkpoint(ckpt: Path, model: Any, opt: Any, sched: Any, scaler: Any) -> dict[str, Any] | None:
    import torch
    from safetensors.torch import load_file

    last = ckpt / "last"
    if not (last / "state.pt").is_file() or not (last / "model.safetensors").is_file():
        return None
    state = torch.load(last / "state.pt", map_location="cpu", weights_only=True)
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in load_file(str(last / "model.safetensors")).items()})
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state
