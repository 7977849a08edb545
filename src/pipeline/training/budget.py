"""A training phase's budget in optimizer steps, sized from the data.

A recipe sized in epochs trains a tiny set for a handful of steps (177 crops, batch 32, 3 epochs: 15
steps from a cold head) and a large set for hours. Every training phase therefore gets at least
`train.min_steps` optimizer steps: epochs = ceil(min_steps / updates per epoch), capped at
`train.max_epochs`. A phase that continues a trained model (the fine-tune) runs only its
`budget_share` of that budget (FinetuneConfig: 0.25). An explicit epoch count (the phase's `epochs`,
else `train.epochs`) wins, and the report then says when it falls short of the budget. Warmup is a
fraction of the phase's steps (`warmup`, default 5%) unless a recipe sets `warmup_epochs`.

The last partial batch is dropped only when it is a sliver (< `DROP_LAST_SHARE` of the set and at
most a few items): on a tiny set `drop_last` would otherwise throw away a large share of it every epoch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

DROP_LAST_SHARE = 0.05  # drop the last partial batch only when it holds less than this share of the items


@dataclass(frozen=True)
class Budget:
    epochs: int
    updates_per_epoch: int
    total_steps: int
    warmup_steps: int
    min_steps: int
    explicit_epochs: bool  # epochs came from the config, not from the budget
    capped: bool  # the budget asked for more than train.max_epochs
    drop_last: bool
    batch_size: int
    n_train: int

    @property
    def short_of_budget(self) -> bool:
        return self.total_steps < self.min_steps

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        how = "set in the config" if self.explicit_epochs else f"derived from a budget of {self.min_steps} steps"
        line = (f"{self.total_steps} optimizer steps = {self.epochs} epochs x {self.updates_per_epoch} updates "
                f"({self.n_train} train items, batch {self.batch_size}{', last partial batch dropped' if self.drop_last else ''}); "
                f"epochs {how}; warmup {self.warmup_steps} steps.")
        if self.short_of_budget:
            line += (f" **Short of the step budget**: {self.total_steps} < {self.min_steps}"
                     + (" (capped by train.max_epochs)" if self.capped else " (epochs set explicitly)") + ".")
        return line


def drop_last(n: int, batch_size: int) -> bool:
    """Drop the last partial batch only when it is a sliver of the set."""
    rest = n % batch_size
    return n > batch_size and 0 < rest < max(1.0, DROP_LAST_SHARE * n)


def updates_per_epoch(n: int, batch_size: int, accum_steps: int = 1) -> int:
    batches = n // batch_size if drop_last(n, batch_size) else math.ceil(n / batch_size)
    return max(1, math.ceil(max(batches, 1) / max(accum_steps, 1)))


def plan(n_train: int, batch_size: int, recipe: Any, train: Any) -> Budget:
    """The budget of one phase: `recipe` is its PhaseTrainConfig, `train` the TrainConfig."""
    per_epoch = updates_per_epoch(n_train, batch_size, recipe.accum_steps)
    explicit = recipe.epochs or train.epochs
    share = float(getattr(recipe, "budget_share", 1.0))
    min_steps = max(1, int(round(int(train.min_steps) * share)))
    if explicit:
        epochs, capped = int(explicit), False
    else:
        wanted = max(1, math.ceil(min_steps / per_epoch))
        epochs, capped = min(wanted, int(train.max_epochs)), wanted > int(train.max_epochs)
    total = epochs * per_epoch
    if getattr(recipe, "warmup_epochs", None) is not None:
        warmup = min(int(recipe.warmup_epochs), max(epochs - 1, 0)) * per_epoch
    else:
        warmup = int(round(float(recipe.warmup) * total))
    return Budget(epochs=epochs, updates_per_epoch=per_epoch, total_steps=total, warmup_steps=warmup,
                  min_steps=min_steps, explicit_epochs=bool(explicit), capped=capped,
                  drop_last=drop_last(n_train, batch_size), batch_size=batch_size, n_train=n_train)
