"""The run itself: its store (what is done, atomically), its watchdog (what it started dies
with it), its progress lines, and the fault points the crash tests kill it at."""
