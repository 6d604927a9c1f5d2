"""The quality table: every training variant of one PersD run, trained and evaluated the same way.

    python benchmarks/quality.py --out runs/quality          # all steps; run again to go on
    python benchmarks/quality.py --out runs/quality --steps report   # the table from what is done

Student Qwen2.5-Coder-0.5B-Instruct, teacher Qwen2.5-Coder-1.5B-Instruct (local vLLM server), the
engine's defaults everywhere else. The training pool is the built-in train split followed by MBPP
ids 511-974 (read by path), less every task that shares a word 13-gram with HumanEval or the MBPP
test split (engine/tasks/overlap.py; the pairs are in the data step's summary), cut to `--pool`.

Steps, each resumable through the run store (`OUT/run`, one engine run directory) and skipped
when its results are there; a kill loses at most the batch in flight:
  data     `engine.distill` with skip_train: attempts, grades, refinements, StanD answers, the
           five datasets, and the base model's HumanEval evaluation (1-step and 2-step)
  train    one LoRA adapter per dataset, the same LoRA settings for every one
  eval     base and every adapter on HumanEval (164) and the MBPP test split (the first
           `--mbpp_tasks` of ids 11-510), pass@1 greedy, 1-step and 2-step (one round of
           multi-step inference on the seen tests)
  ceiling  the 1.5B teacher evaluated the same way
  online   online PersD: `engine.distill --online_rounds 2` on the same run directory (the
           first round's data, adapter and evaluation are reused), then its last adapter on MBPP
  report   OUT/quality.md and OUT/quality.json: the table, and paired bootstrap intervals over
           tasks for each row against base and PersD-combined against StanD
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import RunConfig  # noqa: E402

VARIANTS = ("stand", "stand-matched", "inpd", "persd", "persd-refine", "persd-combined")
STEPS = ("data", "train", "eval", "ceiling", "online", "report")
LABELS = {"base": "base (no fine-tune)", "stand": "StanD", "stand-matched": "StanD, matched budget",
          "inpd": "InpD", "persd": "PersD", "persd-refine": "PersD-refine",
          "persd-combined": "PersD-combined", "online": "online PersD (2 rounds)",
          "teacher": "teacher 1.5B (ceiling)"}


def config(out: Path, mbpp: Path, pool: int) -> RunConfig:
    """The run's settings: the engine's defaults, the pool above, 2-step evaluation."""
    cfg = RunConfig()
    return dataclasses.replace(
        cfg, run_dir=str(out / "run"), skip_train=True,
        data=dataclasses.replace(cfg.data, train_tasks=f"builtin+mbpp-ids:511-974:{mbpp}",
                                 train_limit=pool, decontaminate=f"humaneval+mbpp-test:{mbpp}"),
        eval=dataclasses.replace(cfg.eval, rounds=1))


def train_dir(run: Path, variant: str) -> Path:
    # PersD-combined trains where engine.distill does, so the online step reuses its adapter
    return run / ("train" if variant == "persd-combined" else f"train-{variant}")


def eval_name(row: str, which: str) -> str:
    # the names engine.distill uses, so its evaluations are reused (and reuse these)
    if which == "humaneval" and row == "base":
        return "eval-before"
    if which == "humaneval" and row == "persd-combined":
        return "eval-after"
    if which == "humaneval" and row == "online":
        return "eval-after-o2"   # the online run's last round
    return f"q-{row}-{which}"


def step_data(cfg: RunConfig, out: Path) -> None:
    from engine.distill import run_distill

    summary = run_distill(cfg)
    (out / "data-summary.json").write_text(json.dumps(summary.to_json(), indent=2))


def step_train(cfg: RunConfig, out: Path, variants: tuple[str, ...]) -> None:
    from engine.models import model_identity, resolve_model
    from engine.stages.train import train_adapter

    run = Path(cfg.run_dir)
    student_dir = resolve_model(cfg.student.model)
    student_id = model_identity(student_dir)
    for v in variants:
        data = run / f"{v}.jsonl"
        if not data.exists() or not data.read_text().strip():
            print(f"[quality] {v}: no examples, not trained", file=sys.stderr, flush=True)
            continue
        t0 = time.monotonic()
        train_adapter(dataclasses.replace(cfg, dataset=v), data, student_dir, student_id,
                         train_dir(run, v))
        print(f"[quality] {v}: trained ({time.monotonic() - t0:.0f} s)", file=sys.stderr,
              flush=True)


def eval_sets(cfg: RunConfig, mbpp: Path, mbpp_tasks: int, sandbox) -> dict:
    from engine.tasks import load_tasks
    from engine.tasks.docstring_tests import verify_seen_tests

    # loaded exactly as engine.distill loads its eval set, so the task fingerprints match
    return {"humaneval": verify_seen_tests(load_tasks("humaneval", 0, verify_seen=False), sandbox),
            "mbpp": verify_seen_tests(load_tasks(f"mbpp-test:{mbpp}", mbpp_tasks,
                                                 verify_seen=False), sandbox)}


def evaluate_rows(cfg: RunConfig, mbpp: Path, mbpp_tasks: int, rows: dict[str, str | None],
                  model: str | None = None, sets: tuple[str, ...] = ("humaneval", "mbpp")
                  ) -> None:
    """Evaluate `rows` (row name -> adapter directory or None) on both sets in one engine."""
    from engine.evaluate import evaluate
    from engine.models import model_identity, resolve_model
    from engine.run.store import RunStore
    from engine.student import LazyPool
    from sandbox.pool import SandboxPool

    st = dataclasses.replace(cfg.student, model=model) if model else cfg.student
    model_dir = resolve_model(st.model)
    model_id = model_identity(model_dir)
    with RunStore(cfg.run_dir) as run, SandboxPool(cfg.sandbox) as sandbox, \
            LazyPool(model_dir, st) as pool:
        eval_sets_ = eval_sets(cfg, mbpp, mbpp_tasks, sandbox)
        for row, adapter in rows.items():
            for which, tasks in eval_sets_.items():
                if which not in sets:
                    continue
                t0 = time.monotonic()
                s = evaluate(pool, sandbox, tasks, cfg.eval, st, run, eval_name(row, which),
                             adapter=adapter, model_id=model_id)
                print(f"[quality] {row} {which}: {[r['pass@1'] for r in s.rounds]} "
                      f"({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)


def adapters(run: Path) -> dict[str, str]:
    return {v: str(train_dir(run, v) / "adapter") for v in VARIANTS
            if (train_dir(run, v) / "train-summary.json").exists()}


def step_online(cfg: RunConfig, out: Path, mbpp: Path, mbpp_tasks: int) -> None:
    from engine.distill import run_distill

    summary = run_distill(dataclasses.replace(cfg, skip_train=False, dataset="persd-combined",
                                              online_rounds=2))
    (out / "online-summary.json").write_text(json.dumps(summary.to_json(), indent=2))
    evaluate_rows(cfg, mbpp, mbpp_tasks, {"online": summary.adapter}, sets=("mbpp",))


# ------------------------------------------------------------------------------------ report

def per_task(run: Path, name: str) -> dict[str, list[float]] | None:
    """task id -> [1-step pass@1, 2-step pass@1], from the store's exported results."""
    files = [run / f"{name}-results.jsonl", run / f"{name}-round1-results.jsonl"]
    if not all(f.exists() for f in files):
        return None
    out: dict[str, list[float]] = {}
    for f in files:
        for line in f.read_text().splitlines():
            r = json.loads(line)
            out.setdefault(r["task_id"], []).append(r["correct"] / r["n"] if r["n"] else 0.0)
    return out


def paired_ci(a: dict[str, list[float]], b: dict[str, list[float]], step: int) -> dict:
    """b - a at one inference step, paired over tasks (engine.evaluate.paired_bootstrap)."""
    from engine.evaluate import paired_bootstrap

    return paired_bootstrap({t: v[step] for t, v in a.items()},
                            {t: v[step] for t, v in b.items()})


def report(cfg: RunConfig, out: Path) -> dict:
    run = Path(cfg.run_dir)
    from engine.summary import RunSummary

    def load(name: str) -> RunSummary | None:
        path = out / name
        return RunSummary.from_json(json.loads(path.read_text())) if path.exists() else None

    data, online = load("data-summary.json"), load("online-summary.json")
    teacher = data.teacher if data else None
    tok = {k: (getattr(teacher, k).prompt_tokens + getattr(teacher, k).completion_tokens
               if teacher else 0) for k in ("refine", "stand")}
    sizes = (data.datasets if data else None) or {}
    failed = data.attempts.failed if data and data.attempts else 0
    tasks = data.attempts.tasks if data and data.attempts else 0
    pers = (data.personalisation if data else None) or {}
    rows = []
    results = {}
    for row in ("base", *VARIANTS, "online", "teacher"):
        res = {w: per_task(run, eval_name(row, w)) for w in ("humaneval", "mbpp")}
        results[row] = res
        last = online.online[-1] if online and online.online else None
        ex = {"base": None, "teacher": None,
              "online": last.dataset_size if last else None}.get(row, sizes.get(row))
        tokens = {"stand": tok["stand"], "stand-matched": tok["stand"], "inpd": 0,
                  "persd": tok["refine"], "persd-refine": tok["refine"],
                  "persd-combined": tok["refine"]}.get(row)
        kind = {"stand": "stand", "stand-matched": "stand", "inpd": "inpd", "persd": "persd",
                "persd-refine": "persd-refine", "persd-combined": "persd"}.get(row)
        yld = {"stand": sizes.get("stand", 0) / tasks if tasks else None,
               "persd": sizes.get("persd", 0) / failed if failed else None}
        rows.append({
            "row": row, "label": LABELS[row],
            **{f"{w}_{s}": (round(float(np.mean([v[i] for v in r.values()])), 4) if r else None)
               for w, r in res.items() for i, s in enumerate(("1step", "2step"))},
            "examples": ex, "teacher_tokens": tokens,
            "verified_yield": yld.get("stand" if row.startswith("stand") else
                                      "persd" if row.startswith("persd") else "", None),
            "personalisation": pers[kind].target_vs_attempt.get("text")
            if kind in pers else None})
    cis = []
    for w in ("humaneval", "mbpp"):
        for step, s in enumerate(("1step", "2step")):
            pairs = [("base", r) for r in (*VARIANTS, "online")] + \
                [("stand", "persd-combined"), ("stand-matched", "persd-combined")]
            for a, b in pairs:
                if results[a][w] and results[b][w]:
                    cis.append({"set": w, "step": s, "a": a, "b": b,
                                **paired_ci(results[a][w], results[b][w], step)})
    table = {"rows": rows, "paired": cis, "eval_tasks": {
        w: len(next((r[w] for r in results.values() if r[w]), {}) or {}) for w in ("humaneval", "mbpp")},
        "pool": {"tasks": tasks, "failed": failed,
                 "decontamination_dropped": ((data.decontamination if data else None) or {})
                 .get("dropped")},
        "online": [dataclasses.asdict(r) for r in online.online] if online and online.online
        else None}
    (out / "quality.json").write_text(json.dumps(table, indent=2))
    (out / "quality.md").write_text(markdown(table))
    return table


def markdown(t: dict) -> str:
    def f(x, pct=False):
        if x is None:
            return "-"
        return f"{100 * x:.1f}" if pct else f"{x:,}" if isinstance(x, int) else f"{x:.3f}"
    n = t["eval_tasks"]
    lines = [f"Pool: {t['pool']['tasks']} tasks ({t['pool']['failed']} failed the student's "
             f"greedy attempt; {t['pool']['decontamination_dropped']} dropped by the 13-gram "
             f"overlap check). pass@1 greedy, in %, on HumanEval ({n['humaneval']} tasks) and the "
             f"MBPP test split ({n['mbpp']} tasks); 2-step = one round of multi-step inference "
             "on the seen tests.", "",
             "| row | HumanEval 1-step | 2-step | MBPP 1-step | 2-step | examples | teacher "
             "tokens | verified yield | personalisation |", "|---|" + "---:|" * 8]
    for r in t["rows"]:
        lines.append(f"| {r['label']} | {f(r['humaneval_1step'], 1)} | {f(r['humaneval_2step'], 1)}"
                     f" | {f(r['mbpp_1step'], 1)} | {f(r['mbpp_2step'], 1)} | {f(r['examples'])} | "
                     f"{f(r['teacher_tokens'])} | {f(r['verified_yield'], 1)} | "
                     f"{f(r['personalisation'])} |")
    lines += ["", "Paired differences (b - a, points of pass@1) with 95% bootstrap intervals "
              "over tasks (10,000 resamples):", "",
              "| set | step | a | b | tasks | b - a | 95% interval | |",
              "|---|---|---|---|---:|---:|---|---|"]
    for c in t["paired"]:
        lines.append(f"| {c['set']} | {c['step']} | {LABELS[c['a']]} | {LABELS[c['b']]} | "
                     f"{c['tasks']} | {100 * c['diff']:+.1f} | [{100 * c['ci95'][0]:+.1f}, "
                     f"{100 * c['ci95'][1]:+.1f}] | "
                     f"{'within noise' if c['within_noise'] else 'signal'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/quality", help="directory of the table and its run")
    ap.add_argument("--mbpp", default=str(ROOT.parent / "shared" / "data" / "mbpp.jsonl"),
                    help="MBPP-format file (the pool's ids 511-974 and the test split)")
    ap.add_argument("--pool", type=int, default=200, help="training tasks (after the overlap "
                    "check); online rounds take the next ones")
    ap.add_argument("--mbpp_tasks", type=int, default=200,
                    help="first N tasks of the MBPP test split to evaluate on (0 = all 500)")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated: {', '.join(STEPS)}")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="the datasets the train and eval steps take, in this order (e.g. "
                    "persd-combined,stand first, for the main comparison early)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    mbpp = Path(args.mbpp).resolve()
    if not mbpp.exists():
        ap.error(f"--mbpp: {mbpp} does not exist")
    steps = args.steps.split(",")
    for s in steps:
        if s not in STEPS:
            ap.error(f"--steps: {s!r} is not one of {', '.join(STEPS)}")
    variants = tuple(args.variants.split(","))
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"--variants: {v!r} is not one of {', '.join(VARIANTS)}")
    out.mkdir(parents=True, exist_ok=True)
    cfg = config(out, mbpp, args.pool)
    from engine.models import resolve_model

    for s in STEPS:
        if s not in steps:
            continue
        t0 = time.monotonic()
        print(f"[quality] step {s}", file=sys.stderr, flush=True)
        if s == "data":
            step_data(cfg, out)
        elif s == "train":
            step_train(cfg, out, variants)
        elif s == "eval":
            trained = adapters(Path(cfg.run_dir))
            evaluate_rows(cfg, mbpp, args.mbpp_tasks,
                          {"base": None, **{v: trained[v] for v in variants if v in trained}})
        elif s == "ceiling":
            evaluate_rows(cfg, mbpp, args.mbpp_tasks, {"teacher": None},
                          model=str(resolve_model(cfg.teacher.model)))
        elif s == "online":
            step_online(cfg, out, mbpp, args.mbpp_tasks)
        else:
            print(markdown(report(cfg, out)))
        print(f"[quality] step {s} done in {time.monotonic() - t0:.0f} s", file=sys.stderr,
              flush=True)


if __name__ == "__main__":
    main()
