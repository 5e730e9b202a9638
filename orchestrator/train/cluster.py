"""The Ray cluster the run uses: starting or joining it (once, from the pipeline), what it can place,
whether it has GPUs, and placement groups left by killed drivers of the same run."""
from __future__ import annotations

import os
from typing import Optional

from orchestrator.config import ConfigError, ExperimentConfig
from orchestrator.rundir import RunDir


# Ray Serve's high-throughput mode: read by Serve's processes, whose environment is the one Ray started with
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
HAPROXY_SETTINGS = " ".join(f"{k}={v}" for k, v in HAPROXY_ENV.items())  # as a shell sets them


def init_ray(address: Optional[str] = None, ingress: str = "proxy") -> None:
    """Start a local Ray (all cores) or join ``address``; no-op when already connected. With ``ingress``
    haproxy a local Ray starts in Serve's high-throughput mode; a Ray that is already up must have been
    started so (``HAPROXY_ENV``), and this driver's environment must say so."""
    import ray

    if ingress == "haproxy":
        if ray.is_initialized() or address or os.environ.get("RAY_ADDRESS"):  # joining a Ray that is up
            if any(os.environ.get(k) != v for k, v in HAPROXY_ENV.items()):
                raise ConfigError("serve.ingress: haproxy is chosen where Ray starts and this Ray is already up: start it with "
                                  f"{HAPROXY_SETTINGS} (and run this with them set), "
                                  "or let orchestrator start a local Ray")
        else:
            os.environ.update(HAPROXY_ENV)
            address = "local"  # a new Ray with that environment, not one `ray start` left running on this host
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # A local Ray needs its dashboard: Ray Train's placement-group cleaner queries the state API.
    local = {} if address not in (None, "local") else {"include_dashboard": True, "dashboard_host": "127.0.0.1"}
    ray.init(address=address, logging_level="WARNING", log_to_driver=True, **local)


def use_gpu(cfg: ExperimentConfig) -> bool:
    import ray

    if cfg.train.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return cfg.train.use_gpu == "yes"


def check_fits(cfg: ExperimentConfig) -> None:
    """Fail fast where one fold's workers can never be placed: Ray would wait forever."""
    import ray

    need = cfg.train.num_workers * cfg.train.cpus_per_worker
    nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]]
    have = sum(nodes)
    if need > have:
        raise ConfigError(f"train.cpus_per_worker: {cfg.train.num_workers} worker(s) x {cfg.train.cpus_per_worker} CPU "
                          f"exceed the cluster's {have:g} CPUs; lower it (train.torch_threads sets threads apart)")


def release_dead_drivers(run: RunDir, log=print) -> None:
    """Record this driver in the manifest (train.drivers: Ray session + job id) and remove the
    placement groups still held for earlier drivers of this run that died on this same cluster.

    A driver killed while a fold's Ray Train controller is (re)requesting its worker group can leave
    that group's placement group behind: the request reaches Ray after the dead job's cleanup, so
    nothing ever removes it and its CPUs stay reserved. Only such groups are removed: created by a
    dead earlier job of this run, not detached, and holding no live actor.
    """
    import ray
    from ray.util import remove_placement_group
    from ray.util.placement_group import PlacementGroup
    from ray.util.state import list_actors, list_jobs, list_placement_groups

    ctx = ray.get_runtime_context()
    me = {"session": ctx.get_session_name(), "job": ctx.get_job_id()}
    # job ids are per cluster session: drivers that ran on another cluster (or another start of it) are dropped
    earlier = [d for d in run.stage("train").get("drivers", []) if d["session"] == me["session"] and d != me]
    here = {d["job"] for d in earlier}
    stale = []
    if here:
        try:
            address = ctx.gcs_address  # explicit: the state API refuses to guess among several Rays on a host
            status = {j.job_id: j.status for j in list_jobs(address=address, limit=10_000, raise_on_missing_output=False)}
            dead = {j for j in here if status.get(j) in ("SUCCEEDED", "FAILED", "STOPPED")}  # a driver job not listed is not judged
            used = {a.placement_group_id for a in list_actors(address=address, filters=[("state", "=", "ALIVE")], detail=True,
                                                               limit=10_000, raise_on_missing_output=False)}
            stale = [pg.placement_group_id for pg in list_placement_groups(address=address, detail=True, limit=10_000,
                                                                           raise_on_missing_output=False)
                     if pg.creator_job_id in dead and pg.state != "REMOVED" and not pg.is_detached
                     and pg.placement_group_id not in used]
        except Exception as exc:  # no dashboard on the cluster: nothing to check with
            log(f"could not check for placement groups left by earlier drivers: {exc}")
        else:
            earlier = [d for d in earlier if d["job"] not in dead]
        for pg_id in stale:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
        if stale:
            log(f"removed {len(stale)} placement group(s) left by an earlier, killed driver of this run")
    run.update("train", drivers=earlier + [me])
