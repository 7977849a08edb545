"""One fit loop for every training phase (teacher, regional teacher, student, fine-tune).

`fit(model, train_loader, val_loader, recipe, ...)`: timm's optimizer factory (AdamW / Adam /
SGD, no weight decay on norms and biases), timm's cosine scheduler with linear warmup stepped
per optimizer update (warmup: `warmup_steps`, else the recipe's `warmup` fraction of the steps or
its `warmup_epochs`), gradient accumulation, gradient-norm clipping, label smoothing, timm
Mixup/CutMix with SoftTargetCrossEntropy, optional early stopping after `patience` epochs without
a better val figure, AMP (bf16, or fp16 with a GradScaler) and channels_last (CUDA and CPU: on 2 CPU
cores a Lite0 training step on real crops at 160 px took 1.23 s channels_last against 1.63 s
contiguous; the model is handed back contiguous).

The best epoch (whose weights the model ends with) is picked by `monitor`: `val_top1` or `val_nll`
(ties in either go to the later epoch), or a custom figure of
`evaluate` (higher is better). With `eval_initial=True` the model as it starts (e.g. a pretrained
backbone with its linear-probe head) is scored first, as epoch 0, and stays the answer when no
trained epoch beats it. With `select=False` (a val set too small to rank epochs) nothing is chosen:
every epoch is still scored for the report, and the model ends holding the last epoch's weights;
with `compare_start=True` as well (the trainer sets it when the phase runs short of its step budget)
the start scored as epoch 0 is kept instead when it beats the last epoch on val (ties to the last
epoch): one comparison of two models, without the winner's curse of ranking every epoch.

Checkpoints: `<checkpoint_dir>/last/` after every epoch (model.safetensors + state.pt with the
optimizer, scheduler, scaler, history and best figures, written with torch.save of tensors and
plain values, read back with weights_only=True) and `<checkpoint_dir>/best/model.safetensors`.
A call that finds `last/` resumes after that epoch. Every epoch reseeds torch, numpy and the
loader's generator from (seed, epoch), so on CPU a resumed run equals an uninterrupted one and
the same seed gives the same weights.

Other objectives (metric learning): `evaluate(model, val_loader) -> {name: value}` replaces the
val top-1/top-5/loss figures and `monitor` names the one that picks the best epoch and stops early
(higher is better); `FitResult.best_val_top1` then holds that figure.

Fault injection for tests: `fail_after_steps=N` (an argument, never read from the environment) raises
`InjectedFault` after N optimizer steps, once per checkpoint dir (a marker file remembers it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.core.config import PhaseTrainConfig
from pipeline.training.checkpoint import load_checkpoint as _load_checkpoint
from pipeline.training.checkpoint import save_checkpoint as _save_checkpoint
from pipeline.training.checkpoint import state_save as _state_save

FAULT_MARKER = "fault_injected"
LossFn = Callable[[Any, Any, Any], Any]  # (logits, targets, row indices) -> scalar loss


class InjectedFault(RuntimeError):
    """Raised by the fault-injection hook; transient, so a retried task resumes."""


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one row per evaluated epoch ("epoch": 0 is the initial model)
    best_epoch: int  # 0-based index of the best trained epoch; -1: the initial model (eval_initial)
    best_val_top1: float  # the best row's val top-1 (or its monitor figure when there is no top-1)
    epochs_run: int  # trained epochs (the initial evaluation not counted)
    resumed_from: int | None  # the last finished epoch found in checkpoint_dir, else None
    stopped_early: bool
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    total_steps: int = 0  # optimizer steps of the whole schedule
    lr_peak: float = 0.0
    stop_reason: str = ""
    best_row: dict[str, float] = field(default_factory=dict)
    selected: bool = True  # False: no selection on val (too few val items); the end of the schedule is kept


def amp_dtype(device: str, amp: str) -> Any:
    import torch

    if not str(device).startswith("cuda") or amp == "off":
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _seed_epoch(seed: int, epoch: int, loader: Any) -> None:
    import torch

    s = (seed * 1_000_003 + epoch) % (2**31)
    torch.manual_seed(s)
    np.random.seed(s)  # timm Mixup draws from numpy
    if getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(s)


def _fault_budget(ckpt: Path, fail_after_steps: int | None) -> int | None:
    return None if fail_after_steps is None or (ckpt / FAULT_MARKER).exists() else fail_after_steps


def warmup_steps_of(recipe: PhaseTrainConfig, epochs: int, updates_per_epoch: int) -> int:
    """The recipe's warmup in optimizer steps: whole epochs when `warmup_epochs` is set, else the
    `warmup` fraction of all steps."""
    if getattr(recipe, "warmup_epochs", None) is not None:
        return min(int(recipe.warmup_epochs), max(epochs - 1, 0)) * updates_per_epoch
    return int(round(float(getattr(recipe, "warmup", 0.0)) * epochs * updates_per_epoch))


def _make_optim(model: Any, recipe: PhaseTrainConfig, epochs: int, updates_per_epoch: int,
                warmup_steps: int | None = None) -> tuple[Any, Any]:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    opt = create_optimizer_v2(model, opt=recipe.optimizer, lr=recipe.lr, weight_decay=recipe.weight_decay)
    total = max(epochs * max(updates_per_epoch, 1), 1)
    warmup = warmup_steps_of(recipe, epochs, updates_per_epoch) if warmup_steps is None else int(warmup_steps)
    warmup = min(warmup, total - 1)
    sched = CosineLRScheduler(opt, t_initial=max(total - warmup, 1), lr_min=recipe.min_lr, warmup_t=warmup,
                              warmup_lr_init=recipe.lr * 0.01 if warmup else recipe.lr, warmup_prefix=True,
                              t_in_epochs=False)
    return opt, sched


def default_loss(recipe: PhaseTrainConfig) -> LossFn:
    """CE with label smoothing on class indices; SoftTargetCrossEntropy on mixed (soft) targets."""
    import torch.nn.functional as F
    from timm.loss import SoftTargetCrossEntropy

    soft = SoftTargetCrossEntropy()

    def loss(logits: Any, target: Any, rows: Any) -> Any:
        if target.ndim == 2:
            return soft(logits, target)
        return F.cross_entropy(logits, target, label_smoothing=recipe.label_smoothing)

    return loss


@dataclass
class _Run:
    model: Any
    opt: Any
    sched: Any
    scaler: Any
    device: str
    dtype: Any
    channels_last: bool
    loss_fn: LossFn
    mixup: Any
    recipe: PhaseTrainConfig
    fault: int | None
    ckpt: Path
    steps: int = 0
    bar: Any = None


def _memory_format(x: Any, channels_last: bool) -> Any:
    """`x` channels_last when asked and it is an image batch (4-D); other inputs as they are."""
    import torch

    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _to_device(run: _Run, x: Any) -> Any:
    return _memory_format(x.to(run.device, non_blocking=True), run.channels_last)


def _train_epoch(run: _Run, loader: Any, epoch: int) -> float:
    import torch

    run.model.train()
    accum, total, count = run.recipe.accum_steps, 0.0, 0
    n_batches = len(loader)
    run.opt.zero_grad(set_to_none=True)
    for i, (x, y, rows) in enumerate(loader):
        x, y = _to_device(run, x), y.to(run.device, non_blocking=True)
        target = y
        if run.mixup is not None and x.shape[0] % 2 == 0:
            x, target = run.mixup(x, y)
        with torch.autocast(device_type="cuda", dtype=run.dtype, enabled=run.dtype is not None):
            logits = run.model(x)
        loss = run.loss_fn(logits.float(), target, rows)
        scaled = loss / accum
        (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
        total, count = total + float(loss.detach()) * x.shape[0], count + x.shape[0]
        if (i + 1) % accum == 0 or i + 1 == n_batches:
            _optimizer_step(run, epoch, n_batches)
    return total / max(count, 1)


def _optimizer_step(run: _Run, epoch: int, n_batches: int) -> None:
    import torch

    if run.scaler is not None:
        run.scaler.unscale_(run.opt)
    if run.recipe.clip_grad:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.recipe.clip_grad)
    if run.scaler is not None:
        run.scaler.step(run.opt)
        run.scaler.update()
    else:
        run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    run.steps += 1
    if run.bar is not None:
        run.bar.update(1)
    per_epoch = math.ceil(n_batches / run.recipe.accum_steps)
    run.sched.step_update(epoch * per_epoch + (run.steps - 1) % per_epoch + 1)
    if run.fault is not None and run.steps >= run.fault:
        (run.ckpt / FAULT_MARKER).write_text(f"fault injected after {run.steps} optimizer steps in epoch {epoch}\n")
        raise InjectedFault(f"injected fault after {run.steps} optimizer steps (epoch {epoch})")


def evaluate_loader(model: Any, loader: Any, device: str, dtype: Any = None, channels_last: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(logits float32 [N, C], labels int64 [N]) in loader order."""
    import torch

    model.eval()
    out, labels = [], []
    with torch.inference_mode():
        for x, y, _ in loader:
            x = _memory_format(x.to(device, non_blocking=True), channels_last)
            with torch.autocast(device_type="cuda", dtype=dtype, enabled=dtype is not None):
                out.append(model(x).float().cpu())
            labels.append(y)
    if not out:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return torch.cat(out).numpy(), torch.cat(labels).numpy().astype(np.int64)


def _val_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    if len(labels) == 0:
        return {"val_loss": float("nan"), "val_top1": 0.0, "val_top5": 0.0}
    t, y = torch.from_numpy(logits), torch.from_numpy(labels)
    top = t.topk(min(5, t.shape[1]), dim=1).indices
    return {"val_loss": float(F.cross_entropy(t, y)), "val_top1": float((top[:, 0] == y).float().mean()),
            "val_top5": float((top == y[:, None]).any(dim=1).float().mean())}


def _progress_bar(desc: str | None, total: int) -> Any:
    if not desc:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{desc}: steps", unit="step", leave=False, dynamic_ncols=True)


def _finite(v: Any, default: float) -> float:
    v = float(v)
    return v if math.isfinite(v) else default


def _best(history: list[dict[str, float]], monitor: str = "val_top1") -> int:
    """Index of the best row: see the module docstring (ties in top-1 or NLL go to the later epoch)."""
    def key(i: int) -> tuple[float, ...]:
        h = history[i]
        if monitor == "val_top1":
            return (h["val_top1"], i)
        if monitor == "val_nll":
            return (-_finite(h["val_loss"], math.inf), i)
        return (h[monitor], -i)

    return max(range(len(history)), key=key)


def _early_stop(history: list[dict[str, float]], patience: int | None, monitor: str = "val_top1") -> bool:
    if not patience or len(history) <= patience:
        return False
    best = _best(history, monitor)
    return len(history) - 1 - best >= patience


def fit(model: Any, train_loader: Any, val_loader: Any, recipe: PhaseTrainConfig, *, epochs: int, seed: int,
        checkpoint_dir: str | Path, device: str = "cpu", amp: str = "auto", channels_last: bool = True,
        loss_fn: LossFn | None = None, mixup: Any = None, on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        fail_after_steps: int | None = None, evaluate: Callable[[Any, Any], dict[str, float]] | None = None,
        monitor: str = "val_top1", eval_initial: bool = False, warmup_steps: int | None = None,
        progress: str | None = None, select: bool = True, restart: Callable[[Any], None] | None = None,
        compare_start: bool = False) -> FitResult:
    """Train `model` in place (see the module docstring); it ends holding the best epoch's weights.
    `restart`: applied to the model after epoch 0 is scored, before the first step of a run that does
    not resume (e.g. a fresh head after the probe was scored as epoch 0)."""
    import torch
    from safetensors.torch import load_file

    ckpt = Path(checkpoint_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    cuda = str(device).startswith("cuda")
    dtype = amp_dtype(device, amp)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    per_epoch = math.ceil(len(train_loader) / recipe.accum_steps)
    opt, sched = _make_optim(model, recipe, epochs, per_epoch, warmup_steps)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    run = _Run(model, opt, sched, scaler, device, dtype, channels_last, loss_fn or default_loss(recipe),
               mixup, recipe, _fault_budget(ckpt, fail_after_steps), ckpt)
    run.bar = _progress_bar(progress, epochs * per_epoch)
    state = _load_checkpoint(ckpt, model, opt, sched, scaler)
    history: list[dict[str, float]] = list(state["history"]) if state else []
    resumed = int(state["epoch"]) if state else None
    start = resumed + 1 if state else 0
    if run.bar is not None:
        run.bar.update(start * per_epoch)
    stopped = bool(state and state.get("stopped_early"))
    lr_peak = float(recipe.lr)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(not cuda, warn_only=True)

    def pick() -> int:  # the row the model ends with: the best on val, or the last without selection
        return _best(history, monitor) if select else len(history) - 1

    def final() -> int:  # pick(), or without selection the start when compare_start and it beats the last epoch
        if select or not compare_start or history[0].get("epoch") != 0 or len(history) < 2:
            return pick()
        return 0 if _best([history[0], history[-1]], monitor) == 0 else len(history) - 1

    def score() -> dict[str, float]:
        if evaluate is not None:
            return evaluate(model, val_loader)
        return _val_metrics(*evaluate_loader(model, val_loader, device, dtype, run.channels_last))

    try:
        if eval_initial and state is None:
            history.append({"epoch": 0, "train_loss": math.nan, **score(), "lr": 0.0})
            _state_save(model, ckpt / "best" / "model.safetensors")
            if compare_start and not select:  # "best" follows the last epoch then: keep the start apart
                _state_save(model, ckpt / "start" / "model.safetensors")
        if restart is not None and state is None:
            restart(model)
        for epoch in range(start, epochs):
            if stopped:
                break
            _seed_epoch(seed, epoch, train_loader)
            train_loss = _train_epoch(run, train_loader, epoch)
            sched.step(epoch + 1)
            row = {"epoch": epoch + 1, "train_loss": train_loss, **score(), "lr": float(opt.param_groups[0]["lr"])}
            history.append(row)
            best = pick()
            if best == len(history) - 1:
                _state_save(model, ckpt / "best" / "model.safetensors")
            stopped = select and _early_stop(history, recipe.patience, monitor) and epoch + 1 < epochs
            _save_checkpoint(ckpt, model, opt, sched, scaler, {"epoch": epoch, "history": history,
                                                               "stopped_early": stopped})
            if on_epoch is not None:
                on_epoch(epoch, row)
            if run.bar is not None:
                run.bar.set_postfix_str(f"epoch {epoch + 1}/{epochs} val top-1 {row.get('val_top1', float('nan')):.3f}")
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        if run.bar is not None:
            run.bar.close()
    trained = [h for h in history if h.get("epoch", 1) != 0]
    if not trained:
        raise ValueError("fit: no epoch ran (epochs must be >= 1)")
    best = final()
    offset = len(history) - len(trained)
    weights = ckpt / ("start" if not select and best == 0 else "best") / "model.safetensors"
    if not weights.is_file():  # a checkpoint written before the start was saved: the last epoch
        best, weights = len(history) - 1, ckpt / "best" / "model.safetensors"
    model.load_state_dict({k: v.to(device) for k, v in load_file(str(weights)).items()})
    row = history[best]
    reason = (f"early stop: {recipe.patience} epochs without a better val figure" if stopped else
              f"the schedule ended ({epochs} epochs, {epochs * per_epoch} optimizer steps)")
    return FitResult(history, best - offset, float(row.get("val_top1", row.get(monitor, math.nan))), len(trained),
                     resumed, stopped, run.steps, total_steps=epochs * per_epoch, lr_peak=lr_peak, stop_reason=reason,
                     best_row=dict(row), selected=select)
