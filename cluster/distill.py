"""`ray submit cluster/aws.yaml cluster/distill.py -- ARGS`: runs `python -m engine.distill ARGS`
on the head node (ray submit uploads and runs a script file; persd is pip-installed on every node
by cluster/aws.yaml), joined to the cluster so the pools go where their resources are."""
import os
import sys

os.environ.setdefault("RAY_ADDRESS", "auto")

from engine.distill import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
