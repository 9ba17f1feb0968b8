"""Does distillation help? A 2-layer DistilBERT student distilled from a 4-layer cloze teacher against the same
student trained with MLM alone, on the built-in corpus, scored on held-out masked-position accuracy next to the
trivial baselines (issue 15).

    python benchmarks/distillation.py [--out runs/distillation] [--teacher-steps 2500] [--steps 1000]

Data: `make demo`'s (launch/demo.py `prepare_data`: the stdlib-docs corpus, vocabulary 2000, sequence length 64,
clean tokens masked anew each epoch with BERT's 80/10/10). Every run: 2 CPU ranks, ZeRO-2, fp32, the demo's recipe
(configs/demo.yaml: no dropout, init 0.08, lr 2e-3 linear with 100 warmup steps, batch 32, seed 1234).

1. teacher: `configs/demo.yaml` with 4 layers, `--teacher-steps` steps, then the `--teacher-opt` overrides.
   `--teacher-init stacked` (progressive stacking, Gong et al. 2019, "Efficient Training of BERT by Progressively
   Stacking"): first the demo's 2-layer model is trained (`--base-steps`), exported, and stacked on itself into
   4 layers (blocks 0, 1, 0, 1); the 4-layer teacher is then trained by cloze from that (model.init_from). A
   4-layer post-LN model trained from random init stays on the unigram plateau for thousands of steps on this
   corpus (docs/training.md); stacking starts it past the plateau.
2. distilled: `configs/tiny-distilbert.yaml` (2 layers of the same width), initialised from the teacher's
   embeddings, MLM head and blocks [0, 2] (`model.student_layers`, extract_distilbert.py's way), loss
   5 x T^2 KL + 2 x MLM + 1 x cosine (distiller.py's defaults), `--steps` steps.
3. MLM alone, random init: the same student, no teacher, `--steps` steps.
4. MLM alone, teacher init: the same student initialised from the teacher like 2., trained with alpha_ce =
   alpha_cos = 0 (MLM alone): separates what the soft targets add from what the initialisation adds.

Each is scored by its final evaluation over the whole held-out split: accuracy at the [MASK] positions (baseline: the most frequent token) and over
all target positions (baseline: copy the input where it was left unchanged, the most frequent token elsewhere).
A figure is evidence only where it clears its baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from launch.demo import cpu_env, prepare_data, torchrun_command  # noqa: E402
from launch.recipes import recipe  # noqa: E402

DEMO_RECIPE = [
    "model.hidden_dropout=0.0",
    "model.attention_dropout=0.0",
    "model.initializer_range=0.08",
    "data.objective=mlm",
    "data.num_workers=0",
    "optimizer.lr=2.0e-3",
    "optimizer.warmup_steps=100",
    "optimizer.schedule=linear",
    "trainer.global_batch_size=32",
    "trainer.micro_batch_size=16",
    "trainer.eval_batches=1000",
]
"""configs/demo.yaml's recipe, applied to the student config (tiny-distilbert.yaml has the same width)."""


def train(name: str, config: str, overrides: list[str], out: Path) -> dict[str, float]:
    run = out / name
    done = run / "result.json"
    if not done.exists() or json.loads(done.read_text()).get("stopped_early"):  # a stopped run resumes
        cmd = torchrun_command(
            2, ["train", config, f"run_dir={run}", "logging.progress_bar=false", *overrides]
        )
        t0 = time.perf_counter()
        with (out / f"{name}.log").open("w") as log:
            rc = subprocess.call(cmd, env=cpu_env(), stdout=log, stderr=subprocess.STDOUT)
        if rc != 0:
            sys.exit(f"{name}: training failed with exit code {rc}; see {out / f'{name}.log'}")
        print(f"[distillation] {name}: {time.perf_counter() - t0:.0f}s", flush=True)
    ev: dict[str, float] = json.loads((run / "result.json").read_text())["eval"]
    return ev


def stack_two_layers(run: Path, out: Path) -> Path:
    """Export the 2-layer run to transformers and write a 4-layer BertForMaskedLM whose blocks are its blocks
    0, 1, 0, 1 (progressive stacking: the trained model copied on top of itself); returns the directory."""
    import torch
    import transformers

    exported = out / "base_hf"
    if not (exported / "config.json").exists():
        cmd = [sys.executable, "-m", "launch.cli", "export", str(run), "--out", str(exported)]
        subprocess.run(cmd, check=True, env=cpu_env(), stdout=subprocess.DEVNULL)
    stacked = out / "stacked_hf"
    if (stacked / "config.json").exists():
        return stacked
    base = transformers.BertForMaskedLM.from_pretrained(str(exported))
    n = base.config.num_hidden_layers
    cfg = transformers.BertConfig.from_pretrained(str(exported))
    cfg.num_hidden_layers = 2 * n
    model = transformers.BertForMaskedLM(cfg)
    state = base.state_dict()
    new = {}
    for key, value in state.items():
        if ".layer." in key:
            head, rest = key.split(".layer.", 1)
            i, tail = rest.split(".", 1)
            for copy in (int(i), int(i) + n):
                new[f"{head}.layer.{copy}.{tail}"] = value.clone()
        else:
            new[key] = value
    missing, unexpected = model.load_state_dict(new, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    with torch.no_grad():
        model.save_pretrained(str(stacked))
    for f in exported.iterdir():  # the tokenizer files travel with it
        if f.name not in ("config.json", "model.safetensors", "generation_config.json"):
            (stacked / f.name).write_bytes(f.read_bytes())
    return stacked


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/distillation")
    p.add_argument("--teacher-steps", type=int, default=2500)
    p.add_argument("--steps", type=int, default=1000, help="steps of each student (N)")
    p.add_argument(
        "--teacher-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for the teacher's run (repeatable), after the demo recipe's",
    )
    p.add_argument(
        "--teacher-init",
        choices=["random", "stacked"],
        default="random",
        help="stacked: start the 4-layer teacher from the demo's trained 2-layer model stacked twice (see above)",
    )
    p.add_argument(
        "--base-steps", type=int, default=2500, help="--teacher-init stacked: the 2-layer model's steps"
    )
    args = p.parse_args()
    out = Path(args.out)
    _, shards = prepare_data(out, tag="distillation")
    data = [f"data.path={shards}", "trainer.seed=1234"]
    teacher_overrides = [*data, "model.num_layers=4", f"trainer.max_steps={args.teacher_steps}"]
    teacher_overrides += [
        f"trainer.eval_every={args.teacher_steps}",
        f"checkpoint.every_steps={args.teacher_steps}",
        *args.teacher_opt,
    ]
    student = [*data, *DEMO_RECIPE, f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.steps}"]
    student += ["checkpoint.every_steps=0"]
    teacher = out / "teacher"
    rows = {}
    if args.teacher_init == "stacked":
        base = [*data, f"trainer.max_steps={args.base_steps}", f"trainer.eval_every={args.base_steps}"]
        base += [f"checkpoint.every_steps={args.base_steps}"]
        rows["2-layer base (stacked into the teacher)"] = train("base", str(recipe("demo")), base, out)
        teacher_overrides.append(f"model.init_from={stack_two_layers(out / 'base', out)}")
    rows.update(
        {
            "teacher (4 layers)": train("teacher", str(recipe("demo")), teacher_overrides, out),
            "distilled": train(
                "distilled", str(recipe("tiny-distilbert")), [*student, f"model.teacher={teacher}"], out
            ),
            "MLM alone, random init": train("mlm_random_init", str(recipe("tiny-distilbert")), student, out),
            "MLM alone, teacher init": train(
                "mlm_teacher_init",
                str(recipe("tiny-distilbert")),
                [*student, f"model.teacher={teacher}", "model.alpha_ce=0", "model.alpha_cos=0"],
                out,
            ),
        }
    )
    print(
        f"\nheld-out masked-position accuracy; students: 2 layers, {args.steps} steps; teacher: "
        f"{args.teacher_steps} steps"
        + (f" from a stacked {args.base_steps}-step 2-layer model" if args.teacher_init == "stacked" else "")
    )
    print(
        "| run | [MASK] acc | [MASK] baseline | ratio | all targets acc | all baseline | [MASK] loss | [MASK] positions |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, ev in rows.items():
        ratio = ev["mask_accuracy"] / ev["mask_baseline_accuracy"]
        print(
            f"| {name} | {ev['mask_accuracy']:.4f} | {ev['mask_baseline_accuracy']:.4f} | {ratio:.2f}x | "
            f"{ev['mlm_accuracy']:.4f} | {ev['baseline_accuracy']:.4f} | {ev['mask_loss']:.4f} | "
            f"{int(ev['mask_tokens']):,} |"
        )


if __name__ == "__main__":
    main()
