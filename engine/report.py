"""Rebuild a run's report, or compare runs (the report itself: engine/pipeline/report.py).

    python -m engine.report runs/x                 # (re)build runs/x/report.md and report-*.png
    python -m engine.report runs/a runs/b          # each one's report, and runs/a vs runs/b side
                                                   # by side in runs/a/compare.md (or --out)
"""
from engine.pipeline.report import build, compare, main  # noqa: F401 (the module's API)

if __name__ == "__main__":
    main()
