"""The example cluster file is one `ray up` accepts (the installed Ray's own schema check), and
the resources its node types offer are the ones the README's flags ask for."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_cluster_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    cfg = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    validate_config(fillout_defaults(cfg))
    offered = {k for t in cfg["available_node_types"].values() for k in t["resources"]}
    assert offered == {"student", "sandbox", "trainer"}
    readme = (ROOT / "README.md").read_text()
    asked = set(re.findall(r"--(?:student\.resources|cluster\.\w+_resources) (\w+)=1", readme))
    assert asked == offered
