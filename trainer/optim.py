"""Optimizer and learning-rate schedule built from the typed config (torch only: nothing is JIT-compiled)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimizerConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Parameter groups: no weight decay on biases and normalisation weights (any 1-D parameter). A model with
    optimizer phases (`model.phases`, e.g. DeBERTa-v3's decoupled generator and discriminator) gets the two groups
    per phase, each marked with its "phase" (`model.param_phase(name)`), which Engine.step(phase=) steps alone."""
    phases: tuple[str, ...] = tuple(getattr(model, "phases", ()) or ())
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {
        (phase, decay): [] for phase in (phases or ("",)) for decay in (True, False)
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        phase = model.param_phase(name) if phases else ""  # type: ignore[operator]
        groups[(phase, p.ndim >= 2)].append(p)
    out = []
    for (phase, decay), params in groups.items():
        group: dict = {"params": params, "weight_decay": weight_decay if decay else 0.0}
        if phases:
            if not params:
                continue
            group["phase"] = phase
        out.append(group)
    return out


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2020) as DeepSpeed's FusedLamb computes it, in torch for CPU (engine.py picks FusedLamb on
    GPU): Adam's bias-corrected update plus decoupled weight decay, scaled per tensor by the trust ratio
    ||w|| / ||update||, clamped to [min_coeff, max_coeff] (1 when either norm is 0)."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        max_coeff: float = 10.0,
        min_coeff: float = 0.01,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_coeff=max_coeff, min_coeff=min_coeff
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                update = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt_().add_(group["eps"]))
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = float(p.norm()), float(update.norm())
                trust = 1.0
                if w_norm > 0 and u_norm > 0:
                    trust = min(max(w_norm / u_norm, group["min_coeff"]), group["max_coeff"])
                p.add_(update, alpha=-group["lr"] * trust)
        return loss


def adafactor(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """T5's Adafactor (Shazeer & Stern 2018) as torch.optim.Adafactor computes it. Against mesh-tensorflow's
    AdafactorOptimizer (mesh_tensorflow/optimize.py) with T5's settings (beta1=0, decay_rate=None -> 1 - step^-0.8,
    clipping_threshold=1.0, factored=True, multiply_by_parameter_scale=True, epsilon1=1e-30, epsilon2=1e-3):
    - the same: no momentum, factored row/column second moments, 1 - step^-decay_rate, update clipping by RMS,
      the step scaled by max(1e-3, RMS(param)) (torch always does; mesh-tf's multiply_by_parameter_scale=True);
    - torch caps the learning rate at 1/sqrt(step): a no-op under T5's schedule ('rsqrt': lr 1e-2 for 10^4 steps,
      then 1/sqrt(step)), except that torch's step count is one ahead (1/sqrt(n+1) vs 1/sqrt(n), <= 5e-5 relative);
    - epsilon1: torch clamps the second-moment estimate at eps^2 with eps = the dtype's machine epsilon (1.2e-7 in
      fp32) where mesh-tf adds 1e-30 to grad^2 (1e-30 squared underflows in fp32);
    - torch factors every tensor with 2+ dimensions; mesh-tf only dimensions >= 128 (min_dim_size_to_factor), so
      small matrices keep a full second moment there.
    Weight decay (T5: none) is torch's decoupled lr x weight_decay."""
    return torch.optim.Adafactor(
        groups,
        lr=cfg.lr,
        beta2_decay=-cfg.decay_rate,
        d=cfg.clip_threshold,
        weight_decay=cfg.weight_decay,
    )


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The torch optimizer (CPU, or AdamW anywhere); engine.py swaps in DeepSpeed's FusedLamb for LAMB on GPU."""
    groups = param_groups(model, cfg.weight_decay)
    betas = (cfg.betas[0], cfg.betas[1])
    if cfg.name == "lamb":
        return Lamb(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adafactor":
        return adafactor(groups, cfg)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, fused=cfg.fused)


def lr_factor(step: int, cfg: OptimizerConfig, max_steps: int) -> float:
    """Multiplier of the peak lr after `step` optimizer steps: linear warmup, then linear decay or constant."""
    if cfg.schedule == "rsqrt":  # T5 (mesh-tf learning_rate_schedules.rsqrt_no_ramp_down): no ramp
        return math.sqrt(cfg.warmup_steps / max(step, cfg.warmup_steps))
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "inverse_sqrt":  # T5 / fairseq: lr ~ 1/sqrt(step) after warmup, continuous at the peak
        return max(cfg.min_lr_ratio, math.sqrt(max(1, cfg.warmup_steps) / max(1, step + 1)))
    span = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "cosine":
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - (1.0 - cfg.min_lr_ratio) * progress


class Schedule(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR whose step() does nothing while `hold` is set: a skipped step does not advance the schedule."""

    hold = False

    def step(self, epoch: int | None = None) -> None:
        if not self.hold:
            super().step() if epoch is None else super().step(epoch)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("hold", None)
        return state


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, max_steps: int) -> Schedule:
    return Schedule(optimizer, lambda s: lr_factor(s, cfg, max_steps))
