"""cluster.yaml passes the validation `ray up` runs (defaults filled in, then Ray's JSON schema and
cross-field checks), and a broken copy fails it. No cloud account is touched."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = "/mnt/shared"


@pytest.fixture
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def validated(config: dict) -> dict:
    """What `ray up` checks before it talks to the provider (commands._bootstrap_config)."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_is_valid_for_ray_up(cluster):
    prepared = validated(cluster)
    nodes = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head" and nodes["head"]["max_workers"] == 0
    assert nodes["cpu_worker"]["resources"]["CPU"] > 0 and nodes["cpu_worker"]["min_workers"] >= 1
    assert nodes["gpu_worker"]["resources"]["GPU"] == 1 and nodes["gpu_worker"]["docker"]["worker_image"].endswith("-gpu")


def test_every_node_installs_the_mounted_repository(cluster):
    prepared = validated(cluster)
    (remote, local), = prepared["file_mounts"].items()
    assert (ROOT / local / "pyproject.toml").is_file()  # `ray up` runs from the repository root
    assert (ROOT / local / "experiments" / "example2.yaml").is_file() and (ROOT / local / "data").is_dir()
    install = f"pip install -q -e {remote}"
    assert install in prepared["head_setup_commands"] and install in prepared["worker_setup_commands"]


def test_every_container_sees_the_shared_runs_directory(cluster):
    prepared = validated(cluster)
    assert any(f" {SHARED}" in c and "mount -t nfs4" in c for c in prepared["initialization_commands"])
    assert f"-v {SHARED}:{SHARED}" in prepared["docker"]["run_options"]


@pytest.mark.parametrize("break_it, error, message", [
    (lambda c: c["available_node_types"]["cpu_worker"].pop("resources"), jsonschema.ValidationError, "'resources' is a required"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=1), jsonschema.ValidationError, "'min_worker' was unexpected"),
    (lambda c: c["available_node_types"]["head"]["resources"].update(CPU="eight"), jsonschema.ValidationError, "not of type 'integer'"),
    (lambda c: c.update(head_node_type="missing"), ValueError, "must be one of `available_node_types`"),
    (lambda c: c.update(max_workers=0), ValueError, "smaller than the sum of `min_workers`"),
], ids=["no-resources", "misspelt-key", "non-integer-resource", "unknown-head-type", "max-below-min"])
def test_a_broken_copy_fails_validation(cluster, break_it, error, message):
    break_it(cluster)
    with pytest.raises(error, match=re.escape(message)):
        validated(cluster)
