"""Optimizers with PyTorch's exact update rules, and two learning-rate schedules.

Every ``step()`` visits each parameter whose ``.grad`` is not None and

1. passes ``.grad`` through the parameter's grad hooks (stored back in ``.grad``),
2. applies the update rule below,
3. runs the parameter's post-step hooks.

SGD (``torch.optim.SGD``), g = grad + wd * theta:
    momentum == 0:  theta <- theta - lr g
    otherwise:      buf <- g on the first step, else momentum * buf + (1 - dampening) g
                    d = g + momentum * buf (nesterov) or buf;   theta <- theta - lr d

AdamW (``torch.optim.AdamW``, Loshchilov & Hutter 2019), step t = 1, 2, ...:
    theta <- theta (1 - lr wd)                          (decoupled weight decay)
    m <- b1 m + (1 - b1) g,    v <- b2 v + (1 - b2) g^2
    theta <- theta - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)

State arrays have the parameter's dtype and are created at the first step.
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import check_float, check_int
from ..errors import ArgumentError, DTypeError
from .module import Parameter

__all__ = ["Optimizer", "SGD", "AdamW", "StepLR", "CosineAnnealingLR"]


class Optimizer:
    """Base: holds the parameters (each once) and the learning rate ``lr`` (settable)."""

    def __init__(self, params, lr: float):
        params = list(params)
        seen, self.params = set(), []
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise DTypeError(f"params[{i}]: expected a Parameter, got {type(p).__name__}")
            if id(p) not in seen:
                seen.add(id(p))
                self.params.append(p)
        if not self.params:
            raise ArgumentError("params: expected at least one Parameter, got none")
        self.lr = check_float(lr, "lr", min_value=0.0)
        self.state: dict[int, dict] = {}

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to None."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        for p in self.params:
            g = p.hooked_grad()
            if g is None:
                continue
            self._update(p, g, self.state.setdefault(id(p), {}))
            p.run_post_step_hooks()

    def _update(self, p: Parameter, g: np.ndarray, state: dict) -> None:
        """The update rule of one parameter (the abstract part every optimizer defines)."""
        raise NotImplementedError(f"{type(self).__name__} does not define its update rule (_update)")


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay."""

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.momentum = check_float(momentum, "momentum", min_value=0.0)
        self.dampening = check_float(dampening, "dampening")
        self.weight_decay = check_float(weight_decay, "weight_decay", min_value=0.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ArgumentError(
                f"nesterov: requires momentum > 0 and dampening = 0, got momentum="
                f"{self.momentum}, dampening={self.dampening}")

    def _update(self, p, g, state):
        dt = p.data.dtype.type
        if self.weight_decay:
            g = g + dt(self.weight_decay) * p.data
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = np.array(g, dtype=p.data.dtype, copy=True)
            else:
                buf = dt(self.momentum) * buf + dt(1.0 - self.dampening) * g
            state["momentum_buffer"] = buf
            g = g + dt(self.momentum) * buf if self.nesterov else buf
        p.data = p.data - dt(self.lr) * g


class AdamW(Optimizer):
    """Adam with decoupled weight decay."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ArgumentError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(check_float(b, "betas", min_value=0.0, max_value=1.0, max_inclusive=False)
                           for b in betas)
        self.eps = check_float(eps, "eps", min_value=0.0)
        self.weight_decay = check_float(weight_decay, "weight_decay", min_value=0.0)

    def _update(self, p, g, state):
        dt = p.data.dtype.type
        b1, b2 = self.betas
        if "step" not in state:
            state.update(step=0, exp_avg=np.zeros_like(p.data), exp_avg_sq=np.zeros_like(p.data))
        state["step"] += 1
        t = state["step"]
        data = p.data * dt(1.0 - self.lr * self.weight_decay)
        m = state["exp_avg"] = dt(b1) * state["exp_avg"] + dt(1.0 - b1) * g
        v = state["exp_avg_sq"] = dt(b2) * state["exp_avg_sq"] + dt(1.0 - b2) * (g * g)
        step_size = self.lr / (1.0 - b1**t)
        denom = np.sqrt(v) / dt(math.sqrt(1.0 - b2**t)) + dt(self.eps)
        p.data = data - dt(step_size) * (m / denom)


class _Schedule:
    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise DTypeError(f"optimizer: expected an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.epoch = 0

    def step(self) -> float:
        """Advance one epoch and set (and return) the optimizer's learning rate."""
        self.epoch += 1
        self.optimizer.lr = self.lr_at(self.epoch)
        return self.optimizer.lr


class StepLR(_Schedule):
    """lr_t = base_lr * gamma^floor(t / step_size)  (``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        super().__init__(optimizer)
        self.step_size = check_int(step_size, "step_size", min_value=1)
        self.gamma = check_float(gamma, "gamma", min_value=0.0)

    def lr_at(self, t: int) -> float:
        return self.base_lr * self.gamma ** (t // self.step_size)


class CosineAnnealingLR(_Schedule):
    """lr_t = eta_min + (base_lr - eta_min)(1 + cos(pi t / T_max)) / 2, the closed form of
    ``torch.optim.lr_scheduler.CosineAnnealingLR`` (held at eta_min after T_max)."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        super().__init__(optimizer)
        self.T_max = check_int(T_max, "T_max", min_value=1)
        self.eta_min = check_float(eta_min, "eta_min", min_value=0.0)

    def lr_at(self, t: int) -> float:
        t = min(t, self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2
