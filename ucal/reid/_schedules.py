"""Learning-rate schedules of the trainer, stepped once per epoch."""

import math

import torch

__all__ = ["LR_SCHEDULES", "build_lr_scheduler", "resume_cosine"]


LR_SCHEDULES = ("step", "constant", "cosine")


def build_lr_scheduler(schedule, optimizer, est):
    """The ``torch.optim.lr_scheduler`` that ``UCALReID(lr_schedule=...)`` names.

    ``"step"``: multiply by ``lr_gamma`` every ``lr_step`` epochs (SpCL's
    and the paper's schedule); ``"constant"``: no change; ``"cosine"``:
    cosine annealing to 0 over ``epochs``; a callable
    ``schedule(optimizer, epochs)`` returns any scheduler with ``step()``,
    ``state_dict()`` and ``load_state_dict()``.
    """
    if callable(schedule):
        scheduler = schedule(optimizer, est.epochs)
        missing = [m for m in ("step", "state_dict", "load_state_dict")
                   if not callable(getattr(scheduler, m, None))]
        if missing:
            raise TypeError(
                f"lr_schedule(optimizer, epochs) must return an LR scheduler; "
                f"{type(scheduler).__name__} has no {', '.join(missing)}."
            )
        return scheduler
    if schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=est.lr_step, gamma=est.lr_gamma)
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _constant)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=est.epochs)


def _constant(epoch):
    # a module-level function, not a lambda: the scheduler's state pickles
    return 1.0


def resume_cosine(scheduler, epochs):
    """Stretch a restored cosine schedule to ``epochs`` (a resume that trains longer).

    Torch's cosine scheduler updates the rate recursively from the current
    one, which is 0 at the end of the old span: the rate of the epoch being
    resumed is set from the closed form instead.
    """
    scheduler.T_max = epochs
    t = scheduler.last_epoch
    lrs = [
        scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * t / epochs)) / 2
        for base in scheduler.base_lrs
    ]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
