"""How a run connects the stages: one staged pass (`staged.py`), the same units streamed in
chunks (`streaming.py`), online rounds (`online.py`), and the report of what the run did
(`report.py`)."""
