"""DeBERTa-v3's decoupled generator/discriminator updates (model.decoupled_training, the default; issue 15) against
the reference's training loop, ported below from microsoft/DeBERTa:

- `DeBERTa/apps/tasks/rtd_task.py` `get_train_fn` / `get_decoupled_loss_fn`: two DistributedTrainers, 'G' over
  `model.generator` and 'D' over `model.discriminator`, each with its own optimizer (XAdam with its own
  `max_grad_norm` clipping) and lr schedule. Each step: `g_loss_fn` runs `make_electra_data` (generator MLM loss,
  replacements sampled from it); G backpropagates and steps; then `post_g_loss_fn` hands the replacements to
  `disc_trainer._train_step`, whose forward (`register_discriminator_fw_hook`) reads the generator's embeddings as
  G's step left them (detached) plus the discriminator's delta; D backpropagates `rtd_lambda x rtd_loss` and steps.
- `DeBERTa/training/trainer.py` `_train_step`: zero_grad, backward, optimizer.step (clip inside), zero_grad.

The reference side runs in one process on the whole global batch with two torch AdamW optimizers, each clipping
its own gradients, and two schedules. The cloze side is the real thing: 2 ranks over gloo, DeepSpeed's engine at
ZeRO 0, 2 and 3, 2 micro-batches per rank, the trainer's own phase loop (trainer/loop.py
`forward_backward_phases`) and Engine.step(phase=). The clip threshold is set low enough to bind in both phases,
so a shared clipping norm, a schedule advanced twice per step, or a discriminator step that moved the generator
would each show. Replacements: argmax instead of sampling (both sides), so that a split batch draws what the whole
batch draws; no dropout. XAdam's missing bias correction is a documented deviation (configs/deberta-v3-base.yaml),
not compared here: both sides use torch's AdamW.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from modeling import build_model
from modeling.config import ModelConfig
from trainer.optim import lr_factor

from .conftest import torchrun_module

V, T, STEPS, CLIP, LR = 61, 12, 3, 0.05, 5e-3
STAGES = (0, 2, 3)


def model_config(decoupled: bool = True) -> ModelConfig:
    return ModelConfig.from_preset(
        "tiny_deberta_rtd",
        vocab_size=V,
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        position_buckets=8,
        max_relative_positions=32,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        decoupled_training=decoupled,
    )


def global_batch(step: int) -> dict[str, torch.Tensor]:
    """4 sequences with uneven masked counts and padding; a new batch each step."""
    g = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(5, V, (4, T), generator=g)
    labels = torch.full((4, T), -100)
    for row, k in enumerate((1, 4, 2, 3)):
        labels[row, 1 : 1 + k] = ids[row, 1 : 1 + k]
        ids[row, 1 : 1 + k] = 4  # [MASK]
    mask = torch.ones(4, T, dtype=torch.long)
    mask[1, -3:] = 0
    mask[3, -1:] = 0
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def argmax_sampling() -> None:
    torch.multinomial = lambda p, n: p.argmax(-1, keepdim=True)  # type: ignore[assignment]


def reference_weights() -> dict[str, torch.Tensor]:
    """The reference's decoupled loop (see the module docstring) for STEPS steps of the global batches."""
    from trainer.config import OptimizerConfig

    argmax_sampling()
    torch.manual_seed(0)
    model = build_model(model_config())
    opt_cfg = OptimizerConfig(lr=LR, warmup_steps=2, weight_decay=0.01, schedule="linear")
    trainers = {}
    for part in ("generator", "discriminator"):
        named = [(n, p) for n, p in model.named_parameters() if n.startswith(part + ".")]
        groups = [
            {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": 0.01},
            {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=LR, betas=(opt_cfg.betas[0], opt_cfg.betas[1]), eps=opt_cfg.eps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, opt_cfg, 10))
        trainers[part] = ([p for _, p in named], opt, sched)

    def train_step(part: str, loss: torch.Tensor) -> None:  # DeBERTa/training/trainer.py _train_step
        params, opt, sched = trainers[part]
        opt.zero_grad()
        loss.backward()
        if CLIP:  # XAdam: max_grad_norm over this trainer's parameters
            torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        sched.step()
        opt.zero_grad()

    for step in range(STEPS):
        batch = global_batch(step)
        gen = model(**batch, phase="generator")  # g_loss_fn: make_electra_data
        train_step("generator", gen.loss)
        new_data = gen.replaced  # post_g_loss_fn -> disc_trainer._train_step(new_data)
        disc = model(
            new_data.input_ids,
            attention_mask=batch["attention_mask"],
            rtd_labels=new_data.labels,
            phase="discriminator",
        )
        train_step("discriminator", 10.0 * disc.loss)  # d_loss_fn: rtd_lambda x rtd_loss
    model.zero_grad()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _worker(out: Path) -> None:
    """Under torchrun: rank r trains rows 2r and 2r+1 of each global batch as 2 micro-batches of 1."""
    from trainer import distributed as D
    from trainer.config import config_from_dict
    from trainer.engine import Engine, consolidated_state_dict, init_distributed
    from trainer.loop import forward_backward_phases
    from trainer.losses import task_for

    argmax_sampling()
    info = D.discover()
    init_distributed(info, "gloo", 5)
    norms: dict[str, list[float]] = {}
    for stage in STAGES:
        cfg = config_from_dict(
            {
                "optimizer": {"lr": LR, "grad_clip": CLIP, "warmup_steps": 2, "weight_decay": 0.01},
                "deepspeed": {"zero_stage": stage, "precision": "fp32"},
                "trainer": {"global_batch_size": 4, "micro_batch_size": 1, "max_steps": 10},
            }
        )
        torch.manual_seed(0)
        engine = Engine(build_model(model_config()), cfg, grad_accum=2)
        task = task_for(model_config())
        for step in range(STEPS):
            batch = global_batch(step)
            rows = [2 * info.rank, 2 * info.rank + 1]
            micro = [{k: v[r : r + 1] for k, v in batch.items()} for r in rows]
            metrics: dict[str, float] = {}
            _, _, skipped = forward_backward_phases(engine, task, micro, lambda m, i: 0, metrics=metrics)
            skipped += engine.step(phase=task.phases[-1])
            assert not skipped
            norms.setdefault(f"{stage}", []).append(metrics["grad_norm_generator"])
            norms.setdefault(f"{stage}_d", []).append(engine.grad_norm())
        engine.save(out / f"stage{stage}", "final", {})
        D.barrier()
        if info.rank == 0:
            weights = consolidated_state_dict(out / f"stage{stage}", "final", stage)
            torch.save(weights, out / f"stage{stage}.pt")
        D.barrier()
    if info.rank == 0:
        (out / "norms.json").write_text(json.dumps(norms))
    D.shutdown()


def test_decoupled_steps_equal_the_reference_loop(tmp_path: Path) -> None:
    proc = torchrun_module("tests.test_rtd_decoupled", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ref = reference_weights()
    norms = json.loads((tmp_path / "norms.json").read_text())
    for stage in STAGES:
        # Both phases' gradient norms exceed the threshold: clipping binds on each side, separately.
        assert min(norms[f"{stage}"]) > CLIP and min(norms[f"{stage}_d"]) > CLIP, norms
        ours: dict[str, Any] = torch.load(tmp_path / f"stage{stage}.pt")
        for name, want in ref.items():
            torch.testing.assert_close(
                ours[name].float(),
                want,
                atol=2e-5,
                rtol=1e-4,
                msg=lambda m, n=name, s=stage: f"ZeRO-{s} {n}: {m}",
            )
    # The generator moved (its step ran) and so did the discriminator's delta (its step ran, after the generator's).
    torch.manual_seed(0)
    init = {n: p.detach().clone() for n, p in build_model(model_config()).named_parameters()}
    for name in (
        "generator.deberta.embeddings.word_embeddings.weight",
        "discriminator.deberta.embeddings.word_embeddings._weight",
    ):
        assert not torch.allclose(ref[name], init[name]), name


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
