"""The default training step of a recipe that defines ``loss(model, batch)`` but no ``train_step``.

``zero_grad``, the loss, ``backward``, ``optimizer.step()`` (through the GradScaler when there is
one), ``scheduler.step()``, in that order, as a plain torch loop does. Two objects of torch's own
need more than that: an optimizer whose ``step`` takes a closure (LBFGS, which evaluates the loss
several times) is given one, and ``ReduceLROnPlateau`` is stepped with the step's loss as its metric.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ckpttools.errors import SpecError


def default_step(objs: Any, compute_loss: Callable[[], Any], recipe_name: str) -> Any:
    """Run one default step and return its loss (the first evaluation's, for a closure).

    Args:
        objs: the recipe's ``TrainObjects`` (model, optimizer, scheduler, scaler).
        compute_loss: the recipe's ``loss(model, batch)`` for this step's batch.
        recipe_name: the recipe as named, for the error.

    Returns:
        The loss tensor.

    Raises:
        SpecError: the step failed on the recipe's objects (the recipe's own loss errors are
            already SpecErrors); a ``train_step`` is what such a recipe needs.
    """
    def closure() -> Any:
        objs.optimizer.zero_grad()
        loss = compute_loss()
        (objs.scaler.scale(loss) if objs.scaler is not None else loss).backward()
        return loss

    objs.model.train()
    try:
        if objs.scaler is None and _takes_closure(objs.optimizer):
            loss = objs.optimizer.step(closure)
        else:
            loss = closure()
            if objs.scaler is not None:
                objs.scaler.step(objs.optimizer)
                objs.scaler.update()
            else:
                objs.optimizer.step()
        if objs.scheduler is not None:
            _step_scheduler(objs.scheduler, loss)
    except (RuntimeError, TypeError, ValueError) as e:
        text = " ".join(str(e).split()) or type(e).__name__
        raise SpecError(f"{recipe_name}: the default step failed: {type(e).__name__}: {text}; define "
                        "train_step(model, optimizer, scheduler, batch) for this training") from e
    return loss


def _takes_closure(optimizer: Any) -> bool:
    """Whether ``optimizer.step`` requires a closure (LBFGS; SAM-style optimizers)."""
    try:
        param = inspect.signature(optimizer.step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is inspect.Parameter.empty


def _step_scheduler(scheduler: Any, loss: Any) -> None:
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    if isinstance(scheduler, ReduceLROnPlateau):
        scheduler.step(float(loss.detach()))  # the metric it watches: this step's loss
    else:
        scheduler.step()
