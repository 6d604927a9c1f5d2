"""The run report: `report.md` and its plots, built from a run directory's summary and views.

    python -m engine.report runs/x                 # (re)build runs/x/report.md and report-*.png
    python -m engine.report runs/a runs/b          # each one's report, and runs/a vs runs/b side
                                                   # by side in ./report-compare.md (--out)

Every run writes its report when it ends (engine/pipeline/staged.py). What it shows: pass@k before
and after (per inference step and online round) with a paired bootstrap interval over tasks;
the funnel from tasks to training examples; how personal the targets are; teacher tokens and
cost per verified example and per point gained; where the time went; which tasks flipped.
Numbers come from the files the run wrote, never from anything recomputed here.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.evaluate import paired_bootstrap
from engine.run.store import view_lines
from engine.summary import RunSummary

PLOTS = ("pass", "funnel", "personal", "time")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in view_lines(path)]


def per_task(run: Path, name: str) -> dict[str, float]:
    """task id -> pass@1 of an evaluation view (`eval-before-results`, ...)."""
    return {r["task_id"]: (r["correct"] / r["n"] if r["n"] else 0.0)
            for r in _rows(run / f"{name}.jsonl")}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _table(head: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def evaluations(run: Path, summary: RunSummary) -> list[tuple[str, str, str | None]]:
    """(label, before view, after view) for each inference step and online round this run
    evaluated (after view None: the run trained nothing; files of other invocations are never
    taken for this run's)."""
    rounds = len(summary.pass_before_per_round or [None])
    trained = summary.pass_after is not None
    out = []
    for r in range(rounds):
        tag = "" if r == 0 else f"-round{r}"
        out.append((f"{r + 1}-step", f"eval-before{tag}-results",
                    f"eval-after{tag}-results" if trained else None))
    for row in summary.online or []:
        if row.round:
            out.append((f"online round {row.round}", "eval-before-results",
                        f"eval-after-o{row.round}-results"))
    return out


def build(run_dir: str | Path) -> Path:
    """Write RUN/report.md (+ PNGs); return its path."""
    run = Path(run_dir)
    summary = RunSummary.load(run)
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() \
        else {}
    md = [f"# Run report: `{run}`", ""]
    student = summary.student.model if summary.student else \
        config.get("student", {}).get("model")
    teacher = summary.teacher
    ev = summary.eval
    data = config.get("data", {})
    md += [f"Student **{student}**, teacher **{teacher.model if teacher else '-'}**, training pool "
           f"`{data.get('train_tasks', '-')}` ("
           f"{'all' if not data.get('train_limit') else 'first ' + str(data['train_limit'])}"
           f" tasks), held-out "
           f"set `{ev.set if ev else '-'}` "
           f"({ev.tasks if ev else '-'} tasks, n="
           f"{ev.n if ev else '-'}), fine-tuned on "
           f"**{summary.dataset}**.", ""]
    if summary.decontamination is not None:
        d = summary.decontamination
        md += [f"Decontamination: {d['dropped']} of {d['pool']} pool tasks share a word "
               f"{d['n']}-gram with the {d['against']} evaluation tasks and were dropped.", ""]

    # ---- pass@k
    md += ["## pass@k", ""]
    before, after = summary.pass_before or {}, summary.pass_after or {}
    ks = sorted(before, key=lambda k: int(k.split("@")[1]))
    rows = []
    for k in ks:
        rows.append([k, _pct(before.get(k)), _pct(after.get(k)) if after else "-",
                     f"{100 * (after[k] - before[k]):+.1f}" if after else "-"])
    md += _table(["metric (last step)", "before", "after", "change (points)"], rows) + [""]
    paired = []
    for label, b, a in evaluations(run, summary):
        pb, pa = per_task(run, b), per_task(run, a) if a else {}
        if pb and pa and set(pb) & set(pa):
            ci = paired_bootstrap(pb, pa)
            common = set(pb) & set(pa)
            paired.append([label, ci["tasks"], _pct(sum(pb[t] for t in common) / len(common)),
                           _pct(sum(pa[t] for t in common) / len(common)),
                           f"{100 * ci['diff']:+.1f}",
                           f"[{100 * ci['ci95'][0]:+.1f}, {100 * ci['ci95'][1]:+.1f}]",
                           "within noise" if ci["within_noise"] else "signal"])
    if paired:
        md += ["pass@1 per step, paired over tasks (95% bootstrap interval, 10,000 resamples):",
               ""]
        md += _table(["evaluation", "tasks", "before", "after", "after - before", "95% interval",
                      ""], paired) + [""]
    md += ["![pass@1 before and after](report-pass.png)", ""]

    # ---- funnel
    att = summary.attempts
    ref = teacher.refine if teacher else None
    ds = summary.datasets or {}
    funnel = [("training tasks", att and att.tasks), ("student attempts", att and att.samples),
              ("failed attempts", att and att.failed), ("teacher requests", ref and ref.calls),
              ("refinements", ref and ref.samples), ("verified refinements", ref and ref.verified),
              ("PersD examples", ds.get("persd")),
              (f"training examples ({summary.dataset})", ds.get(summary.dataset))]
    md += ["## Funnel", ""] + _table(["step", "count"], [[a, "-" if b is None else b]
                                                       for a, b in funnel]) + [""]
    if ref and ref.verified_by_round:
        failed = att.failed if att else 0
        md += [f"Verified refinements per teacher round: {ref.verified_by_round}; returned "
               f"unchanged: {ref.unchanged}; no code extracted: "
               f"{ref.extraction_failed}. Verified yield (failed attempts with a "
               f"passing refinement): {ds.get('persd', 0)} of {failed} = "
               f"{_pct(ds.get('persd', 0) / failed) if failed else '-'}%.", ""]
    md += ["Datasets: " + ", ".join(f"{k} {v}" for k, v in ds.items()) + ".", "",
           "![funnel](report-funnel.png)", ""]

    # ---- personalisation
    pers = summary.personalisation or {}
    if pers:
        md += ["## Personalisation", "",
               "Similarity of each example's target to the student's own attempt at the task "
               "(difflib ratio of normalised code; 1 = the same code). `closer than StanD`: the "
               "share of examples whose target is closer to the attempt than the task's "
               "verified StanD answer (not shown for StanD itself).", ""]
        md += _table(["dataset", "examples", "target vs attempt (text / tokens / AST)",
                      "StanD vs attempt", "reference vs attempt", "closer than StanD"],
                     [[k, v.examples, " / ".join(f"{v.target_vs_attempt[m]:.2f}"
                                                 if v.target_vs_attempt[m] is not None
                                                 else "-" for m in ("text", "tokens", "ast")),
                       "-" if v.stand_vs_attempt is None else f"{v.stand_vs_attempt:.2f}",
                       "-" if v.reference_vs_attempt is None
                       else f"{v.reference_vs_attempt:.2f}",
                       "-" if v.closer_than_stand is None or k.startswith("stand")
                       else f"{_pct(v.closer_than_stand)}% of {v.with_stand}"]
                      for k, v in pers.items()]) + ["", "![personalisation](report-personal.png)",
                                                    ""]

    # ---- teacher
    md += ["## Teacher", ""]
    trows = []
    parts = {"refine": teacher.refine, "stand": teacher.stand} if teacher else {}
    for part, t in parts.items():
        trows.append([part, t.calls, t.samples, t.cached, f"{t.prompt_tokens:,}",
                      f"{t.completion_tokens:,}", f"{t.cost_usd:.4f}", t.verified])
    md += _table(["part", "requests", "answers", "from cache", "prompt tokens",
                  "completion tokens", "cost (USD)", "verified"], trows) + [""]
    cost = sum(t.cost_usd for t in parts.values())
    tokens = ref.prompt_tokens + ref.completion_tokens if ref else 0
    examples = summary.examples()
    gain = (after.get("pass@1", 0) - before.get("pass@1", 0)) * 100 if after else None
    md += [f"Refinement tokens per verified example: "
           f"{tokens / ds['persd']:,.0f}" if ds.get("persd") else
           "Refinement tokens per verified example: - (none verified)",
           ""]
    if cost == 0 and tokens:
        md += ["Cost: none billed (a local teacher, or a model without a price: "
               "`--teacher.price_in_per_mtok` / `--teacher.price_out_per_mtok` set one).", ""]
    else:
        md += [f"Cost per training example: ${cost / examples:.4f}" if examples else "",
               f"Cost per pass@1 point gained: ${cost / gain:.4f}" if gain and gain > 0 else
               "Cost per pass@1 point gained: - (no gain)", ""]

    # ---- time
    times = summary.seconds_per_stage
    jobs = summary.jobs
    reused = sum(v.get("reused", 0) for v in jobs.values() if isinstance(v, dict))
    computed = sum(v.get("computed", 0) for v in jobs.values() if isinstance(v, dict))
    md += ["## Where the time went", "",
           f"Seconds of this invocation, which computed {computed:,} jobs and reused {reused:,} "
           f"from the run store (finished by an earlier invocation, or the same program "
           f"graded twice).", ""] + _table(
        ["stage", "seconds", "share"],
        [[k, f"{v:.1f}", f"{100 * v / max(sum(times.values()), 1e-9):.0f}%"]
         for k, v in times.items()]) + ["", f"Total {sum(times.values()):.0f} s.", "",
                                         "![time per stage](report-time.png)", ""]
    sb = summary.sandbox or {}
    if sb:
        md += [f"Sandbox: {sb.get('programs')} programs graded, {sb.get('sandbox_faults', 0)} "
               f"executor faults re-run ({sb.get('sandbox_faults_final', 0)} final), "
               f"{sb.get('tests_inside', 0)} tests judged inside the program.", ""]

    # ---- flips
    pb = per_task(run, "eval-before-results")
    pa = per_task(run, "eval-after-results") if summary.pass_after is not None else {}
    if pb and pa:
        up = sorted(t for t in pb if pb[t] < pa.get(t, 0))
        down = sorted(t for t in pb if pb[t] > pa.get(t, 0))
        md += ["## Tasks that changed (1-step pass@1)", "",
               f"Better after fine-tuning ({len(up)}): " + (", ".join(up) or "none"), "",
               f"Worse after fine-tuning ({len(down)}): " + (", ".join(down) or "none"), ""]

    # ---- online
    if summary.online:
        md += ["## Online rounds", ""] + _table(
            ["round", "tasks", "train pass rate", "failures", "verified attempts",
             "new examples", "dataset", "held-out pass@1"],
            [[r.round, r.tasks, _pct(r.train_pass_rate), r.failures, r.verified_attempts,
              r.new_examples, r.dataset_size, _pct(r.pass_after.get("pass@1"))]
             for r in summary.online]) + [""]

    plots(run, summary, funnel, times)
    path = run / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def plots(run: Path, summary: RunSummary, funnel: list, times: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(run / f"report-{name}.png", dpi=110)
        plt.close(fig)

    steps = evaluations(run, summary)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels, b_vals, a_vals = [], [], []
    for label, b, a in steps:
        pb, pa = per_task(run, b), per_task(run, a) if a else {}
        if pb:
            labels.append(label)
            b_vals.append(100 * sum(pb.values()) / len(pb))
            a_vals.append(100 * sum(pa.values()) / len(pa) if pa else None)
    xs = range(len(labels))
    trained = any(v is not None for v in a_vals)
    width = 0.4 if trained else 0.6
    bars = [ax.bar([x - (0.2 if trained else 0) for x in xs], b_vals, width, label="before")]
    if trained:
        bars.append(ax.bar([x + 0.2 for x in xs], [v or 0.0 for v in a_vals], width,
                           label="after"))
    for b in bars:
        ax.bar_label(b, fmt="%.1f", padding=2)
    ax.set_xticks(list(xs), labels)
    ax.set_ylim(0, 115)          # room above 100% for the labels and the legend
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("pass@1 (%)")
    ax.set_title("Held-out pass@1 before and after fine-tuning")
    ax.legend(loc="upper right", ncol=2, frameon=False)
    save(fig, "pass")

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [n for n, v in funnel if v is not None]
    bars = ax.barh(names[::-1], [v for _, v in funnel if v is not None][::-1], color="#4c72b0")
    ax.bar_label(bars, padding=3)
    ax.set_title("From tasks to training examples")
    save(fig, "funnel")

    fig, ax = plt.subplots(figsize=(6, 3.2))
    # counted per bin as the view streams by: a run of any size draws in bounded memory
    counts = {"persd": [0] * 10, "stand": [0] * 10}
    for line in view_lines(run / "personalisation.jsonl"):
        r = json.loads(line)
        if r["kind"] in counts:
            counts[r["kind"]][min(int(r["target"]["text"] * 10), 9)] += 1
    groups = [(counts[kind], f"{label} (n={sum(counts[kind])})")
              for kind, label in (("persd", "PersD target"), ("stand", "StanD answer"))
              if sum(counts[kind])]
    if groups:   # side by side per bin, so neither hides the other
        centres = [i / 10 + 0.05 for i in range(10)]
        ax.hist([centres] * len(groups), bins=[i / 10 for i in range(11)],
                weights=[c for c, _ in groups], label=[label for _, label in groups])
        ax.legend()
    ax.set_xlabel("similarity to the student's own attempt")
    ax.set_ylabel("examples")
    ax.set_title("How personal the targets are")
    save(fig, "personal")

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.barh(list(times)[::-1], list(times.values())[::-1], color="#55a868")
    ax.set_xlabel("seconds")
    ax.set_title("Time per stage")
    save(fig, "time")


def compare(runs: list[Path], out: Path) -> Path:
    """Key numbers of several runs side by side, and the paired difference of each run's
    after-evaluation against the first run's on the tasks both have."""
    sums = [RunSummary.load(r) for r in runs]
    md = ["# Runs compared", ""]
    keys = [("dataset", lambda s: s.dataset),
            ("failed attempts", lambda s: s.attempts.failed if s.attempts else None),
            ("training examples", lambda s: s.examples()),
            ("pass@1 before", lambda s: _pct((s.pass_before or {}).get("pass@1"))),
            ("pass@1 after", lambda s: _pct((s.pass_after or {}).get("pass@1"))),
            ("teacher cost (USD)", lambda s: s.teacher.refine.cost_usd + s.teacher.stand.cost_usd
             if s.teacher else 0),
            ("seconds", lambda s: round(sum(s.seconds_per_stage.values())))]
    md += _table(["", *[f"`{r}`" for r in runs]], [[k, *[f(s) for s in sums]] for k, f in keys])
    first = per_task(runs[0], "eval-after-results")
    rows = []
    for r in runs[1:]:
        other = per_task(r, "eval-after-results")
        if first and other and set(first) & set(other):
            ci = paired_bootstrap(first, other)
            rows.append([f"`{r}` - `{runs[0]}`", ci["tasks"], f"{100 * ci['diff']:+.1f}",
                         f"[{100 * ci['ci95'][0]:+.1f}, {100 * ci['ci95'][1]:+.1f}]",
                         "within noise" if ci["within_noise"] else "signal"])
    if rows:
        md += ["", "pass@1 after fine-tuning, paired over the tasks both evaluated:", ""]
        md += _table(["runs", "tasks", "difference (points)", "95% interval", ""], rows)
    out.write_text("\n".join(md) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m engine.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories (each with summary.json)")
    ap.add_argument("--out", default="report-compare.md", help="the comparison (several runs)")
    args = ap.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    for r in runs:
        if not (r / "summary.json").exists():
            print(f"error: {r} has no summary.json (the run has not finished)", file=sys.stderr)
            raise SystemExit(2)
        print(build(r))
    if len(runs) > 1:
        print(compare(runs, Path(args.out)))


if __name__ == "__main__":
    main()
