"""Every shipped recipe in configs/ starts: 3 steps of each, at tiny width (the preset's shape overridden by dotted
overrides), on tiny shards of the objective it trains on, through the recipe's own optimizer, schedule, ZeRO stage
and precision (fp16 aside: it needs a GPU, so it runs fp32 here). One process runs all of them in a row (one
interpreter and DeepSpeed import for all of them), and records which optimizer each built and the lr of each step."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import ROOT, cloze_env

RECIPES = {
    # recipe: (shards, optimizer class the engine must build)
    "bert-base": ("nsp", "AdamW"),
    "bert-large": ("nsp", "AdamW"),
    "roberta-base": ("tokens", "AdamW"),
    "albert-base": ("sop", "Lamb"),
    "electra-small": ("electra", "AdamW"),
    "electra-base": ("electra", "AdamW"),
    "t5-base": ("t5", "Adafactor"),
    "bart-base": ("bart", "AdamW"),
    "distilbert": (
        "tokens",
        "AdamW",
    ),  # distilled from DISTIL_TEACHER, masked by distil_mlm (the fixture saves both)
    "deberta-v3-base": ("electra", "AdamW"),
    "longformer-base-4096": ("tokens", "AdamW"),  # initialised from LONG_INIT (model.init_from)
}
MULTILINGUAL = ("xlmr-base", "mt5-small", "xlm-base")
"""Recipes over a data.mixture of per-language datasets: started (at tiny width, 50 steps on 2 ranks, real text in
five languages) by tests/test_multilingual_train.py."""
SHARDS = {
    "nsp": dict(objective="mlm", sentence_task="nsp"),
    "sop": dict(objective="mlm", sentence_task="sop"),
    "tokens": dict(objective="tokens"),
    "electra": dict(objective="electra"),
    "t5": dict(objective="t5"),
    "bart": dict(objective="bart"),
    "mlm": dict(objective="mlm"),
}
DISTIL_TEACHER = "distil-teacher"
LONG_INIT = "long-init"
"""Beside the shards: a random transformers LongformerForMaskedLM of the TINY shape (window 16), the Longformer
recipe's model.init_from."""
"""Beside the shards: a random transformers BertForMaskedLM of the TINY shape, configs/distilbert.yaml's teacher."""
TINY = [
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.intermediate_size=64",
    "model.max_position_embeddings=64",
    "model.activation_checkpointing=false",
]
STEPS = 3


def overrides(recipe: str, data: Path, run: Path) -> list[str]:
    extra = {
        "albert-base": ["model.embedding_size=16"],
        "electra-small": ["model.embedding_size=16"],
        "t5-base": ["model.d_kv=16"],
        "deberta-v3-base": ["model.position_buckets=32"],  # 256 buckets need relative distances up to 512
        "longformer-base-4096": ["model.attention_window=[16]", f"model.init_from={data.parent / LONG_INIT}"],
        "distilbert": [
            "model.student_layers=[0,1]",
            f"model.teacher={data.parent / DISTIL_TEACHER}",
            f"data.objective_options.token_counts={data.parent / 'tokens.counts.npy'}",
        ],
    }.get(recipe, [])
    precision = ["deepspeed.precision=fp32"] if recipe == "albert-base" else []  # fp16 needs a GPU
    return [
        *TINY,
        *extra,
        *precision,
        f"data.path={data}",
        "data.num_workers=0",
        f"run_dir={run}",
        f"trainer.max_steps={STEPS}",
        "trainer.global_batch_size=4",
        "trainer.micro_batch_size=2",  # 2 micro-batches a step: accumulation and the global loss normalisation
        "trainer.eval_every=0",
        "trainer.eval_batches=1",
        "checkpoint.every_steps=0",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
    ]


def _run_all(spec_file: Path) -> None:
    """In the subprocess: fit() every recipe in turn; record optimizer class, lr per step, loss per step."""
    from trainer import engine as E
    from trainer.callbacks import Callback
    from trainer.config import load_config
    from trainer.loop import fit

    spec = json.loads(spec_file.read_text())
    built: list[str] = []
    build = E.build_optimizer

    def recording(model: Any, cfg: Any) -> Any:
        opt = build(model, cfg)
        built.append(type(opt).__name__)
        return opt

    E.build_optimizer = recording  # type: ignore[assignment]

    class Record(Callback):
        def __init__(self) -> None:
            self.steps: dict[int, dict[str, float]] = {}

        def on_step(self, step: int, metrics: dict[str, float]) -> None:
            self.steps[step] = {"lr": metrics["lr"], "loss": metrics["loss"]}

    results: dict[str, Any] = {}
    for recipe, args in spec.items():
        rec = Record()
        try:
            cfg = load_config(f"configs/{recipe}.yaml", args)
            r = fit(cfg, [rec])
            results[recipe] = {"step": r.step, "optimizer": built[-1], "steps": rec.steps}
        except Exception as e:  # one broken recipe must not hide the others
            results[recipe] = {"error": f"{type(e).__name__}: {e}"}
    (spec_file.parent / "results.json").write_text(json.dumps(results))


def save_distil_teacher(path: Path, shards: Path) -> None:
    """A BertForMaskedLM of the TINY shape with the shards' vocabulary and pad id (configs/distilbert.yaml's teacher)."""
    import transformers

    manifest = json.loads((shards / "manifest.json").read_text())
    cfg = transformers.BertConfig(
        vocab_size=manifest["tokenizer"]["vocab_size"],
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=manifest["special_tokens"]["pad"],
    )
    transformers.BertForMaskedLM(cfg).save_pretrained(str(path))


def save_long_init(path: Path, shards: Path) -> None:
    """A LongformerForMaskedLM of the TINY shape, window 16, with the shards' vocabulary and pad id
    (configs/longformer-base-4096.yaml's model.init_from)."""
    import transformers

    manifest = json.loads((shards / "manifest.json").read_text())
    pad = manifest["special_tokens"]["pad"]
    cfg = transformers.LongformerConfig(
        vocab_size=manifest["tokenizer"]["vocab_size"],
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64 + pad + 1,
        attention_window=16,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=pad,
    )
    transformers.LongformerForMaskedLM(cfg).save_pretrained(str(path))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Any]:
    from data_pipeline.sources import stdlib_docstrings
    from data_pipeline.writer import ShardOptions, write_shards

    root = tmp_path_factory.mktemp("recipes")
    text = root / "corpus.txt"
    docs = [d for d in stdlib_docstrings() if len(d) >= 4][:300]  # multi-sentence documents, for pairs
    text.write_text("\n\n".join("\n".join(d) for d in docs) + "\n")
    for name, opts in SHARDS.items():
        write_shards(
            [str(text)],
            tokenizer_dir,
            root / name,
            ShardOptions(seq_len=64, docs_per_block=300, valid_fraction=0.05, **opts),  # type: ignore[arg-type]
            workers=1,
        )
    save_distil_teacher(root / DISTIL_TEACHER, root / "mlm")
    save_long_init(root / LONG_INIT, root / "tokens")
    from data_pipeline.objectives import count_tokens

    np.save(root / "tokens.counts.npy", count_tokens(str(root / "tokens")))
    spec = {r: overrides(r, root / shards, root / f"run-{r}") for r, (shards, _) in RECIPES.items()}
    (root / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_recipes", str(root / "spec.json")],
        cwd=ROOT,
        env=cloze_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((root / "results.json").read_text())


def test_every_recipe_is_covered() -> None:
    shipped = {p.stem for p in (ROOT / "configs").glob("*.yaml")}
    tiny = {s for s in shipped if s.startswith("tiny-")}
    assert shipped - {"demo"} - tiny - set(MULTILINGUAL) == set(RECIPES)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_trains_three_steps(results: dict[str, Any], recipe: str) -> None:
    from trainer.config import load_config
    from trainer.optim import lr_factor

    r = results[recipe]
    assert "error" not in r, r.get("error")
    assert r["step"] == STEPS
    assert r["optimizer"] == RECIPES[recipe][1]
    cfg = load_config(f"configs/{recipe}.yaml").optimizer
    steps = {int(k): v for k, v in r["steps"].items()}
    assert sorted(steps) == list(range(1, STEPS + 1))
    for s, m in steps.items():
        # The lr logged after optimizer step s is the recipe's schedule at s (warmup, T5's constant phase, ...).
        assert m["lr"] == pytest.approx(cfg.lr * lr_factor(s, cfg, STEPS), rel=1e-6)
        assert math.isfinite(m["loss"]) and m["loss"] > 0


def rsqrt_no_ramp_down(step: int, warmup_steps: float = 1e4) -> float:
    """mesh_tensorflow/transformer/learning_rate_schedules.py `rsqrt_no_ramp_down` (T5's schedule), ported."""
    return 1.0 / math.sqrt(max(float(step), warmup_steps))


def test_t5_schedule_is_mesh_tensorflow_rsqrt() -> None:
    from trainer.config import load_config
    from trainer.optim import lr_factor

    cfg = load_config("configs/t5-base.yaml").optimizer
    for step in (0, 1, 9_999, 10_000, 10_001, 40_000, 524_287):
        assert cfg.lr * lr_factor(step, cfg, 524_288) == pytest.approx(rsqrt_no_ramp_down(step), rel=1e-12)


def mesh_adafactor_step(
    w: Any, g: Any, state: dict[str, Any], step: int, lr: float, decay_exponent: float = 0.8
) -> Any:
    """mesh_tensorflow/optimize.py AdafactorOptimizer.apply_grad with T5's settings (beta1=0, factored,
    multiply_by_parameter_scale=True, clipping_threshold=1.0, epsilon1=1e-30, epsilon2=1e-3), ported to numpy.
    `step` counts from 0 (mesh-tf's global_step before the update)."""
    import numpy as np

    grad_squared = g * g + 1e-30
    decay_rate = 1.0 - (step + 1.0) ** -decay_exponent
    mixing_rate = 1.0 - decay_rate
    update_scale = lr * max(float(np.sqrt(np.mean(w * w))), 1e-3)
    if w.ndim >= 2:
        vr = decay_rate * state.get("vr", 0.0) + mixing_rate * grad_squared.mean(-1)
        vc = decay_rate * state.get("vc", 0.0) + mixing_rate * grad_squared.mean(-2)
        state.update(vr=vr, vc=vc)
        long_term_mean = vr.mean(-1, keepdims=True)
        x = g * (1.0 / np.sqrt(vr / long_term_mean))[:, None] * (1.0 / np.sqrt(vc))[None, :]
    else:
        v = decay_rate * state.get("v", 0.0) + mixing_rate * grad_squared
        state["v"] = v
        x = g / np.sqrt(v)
    x = x / max(1.0, float(np.sqrt(np.mean(x * x))) / 1.0)
    return w - x * update_scale


def test_adafactor_matches_mesh_tensorflow() -> None:
    """optimizer.name=adafactor with T5's settings takes mesh-tensorflow's steps (matrix 128 x 130: factored in
    both; mesh-tf leaves dimensions < 128 unfactored, see trainer/optim.py `adafactor`)."""
    import numpy as np
    import torch

    from trainer.config import OptimizerConfig
    from trainer.optim import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Linear(130, 128)
    cfg = OptimizerConfig(name="adafactor", lr=1e-2, weight_decay=0.0, schedule="rsqrt", warmup_steps=10_000)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.Adafactor)
    ref = {n: p.detach().double().numpy().copy() for n, p in model.named_parameters()}
    states: dict[str, dict[str, Any]] = {n: {} for n in ref}
    for step in range(5):
        grads = {n: torch.randn_like(p) * (step + 1) for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.grad = grads[n].clone()
            ref[n] = mesh_adafactor_step(ref[n], grads[n].double().numpy(), states[n], step, cfg.lr)
        opt.step()
        for n, p in model.named_parameters():
            np.testing.assert_allclose(p.detach().double().numpy(), ref[n], rtol=1e-5, atol=1e-6, err_msg=n)


def test_adafactor_under_zero_is_refused() -> None:
    from trainer.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"optimizer.name=adafactor needs deepspeed.zero_stage=0"):
        load_config("configs/t5-base.yaml", ["deepspeed.zero_stage=1"])


if __name__ == "__main__":
    _run_all(Path(sys.argv[1]))
