"""Joins a multi-process JAX cluster when the run is one; a plain run stays alone.

Check a cluster before a long job (every process prints its devices and an all-reduce):
  srun python -m fgmask_jax.distributed                     # SLURM
  launch/local.sh --module fgmask_jax.distributed 2 4       # 2 local processes

`maybe_initialize` (called by ``main`` right after flag parsing, before any JAX
computation) calls ``jax.distributed.initialize`` in exactly these cases:

- ``--coordinator_address``, ``--num_processes`` and ``--process_id`` are given
  (a bare cluster, or ``launch/local.sh``);
- the environment variables say this process is one of several of a cluster job
  (`detected_cluster`): a SLURM step started by ``srun`` with several tasks (the
  coordinator, count and index are read from SLURM's variables), an Open MPI
  ``mpirun`` or a Cloud TPU pod slice (``jax.distributed.initialize()`` then finds
  the rest itself). Under such a job, a failure to join is an error, never a quiet
  run alone: N copies of one run on one workdir is what it prevents;
- ``--distributed=on`` or ``FGMASK_DISTRIBUTED=1``: always, and JAX fills in
  whatever is not given (its own cluster detection, ``JAX_COORDINATOR_ADDRESS``).

Only public JAX API is used: ``jax.distributed.initialize`` with explicit arguments
or its own detection.

``--distributed=off`` or ``FGMASK_DISTRIBUTED=0`` never joins. A plain
``python -m fgmask_jax.main ...`` on a laptop reaches nothing.

Time is bounded: a process that cannot reach the coordinator stops after
``--initialization_timeout`` seconds with a message that says what to check,
and once joined, a process whose peer dies is stopped by JAX's coordination
service after ``--heartbeat_timeout`` seconds (an abort that names the dead task).

Devices per process: under SLURM one task per node drives all GPUs of its node;
several tasks per node drive one GPU each (task ``SLURM_LOCALID`` takes GPU
``SLURM_LOCALID``, JAX's rule). ``--local_device_ids`` overrides both.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import time

from absl import logging

from fgmask_jax import errors

ENV_SWITCH = "FGMASK_DISTRIBUTED"

class ClusterJoinError(errors.UserError, RuntimeError):
    """This process could not join the multi-process cluster."""


@dataclasses.dataclass(frozen=True)
class Options:
    """What the flags (`cli.define_cluster_flags`) and the environment ask for."""

    mode: str = "auto"  # auto | on | off
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: str = "auto"  # auto | all | "0,1"
    initialization_timeout: int = 300
    heartbeat_timeout: int = 100


@dataclasses.dataclass(frozen=True)
class Plan:
    """The arguments of ``jax.distributed.initialize`` and where they came from.

    ``None`` fields are left for JAX to fill in (only when ``source == 'jax'``).
    """

    source: str  # "flags", a JAX cluster name ("slurm", "gcetpu", ...), or "jax"
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    local_device_ids: tuple[int, ...] | None  # None: every local device

    def describe(self) -> str:
        if self.source == "jax":
            return "cluster parameters detected by jax.distributed.initialize"
        return (f"process {self.process_id} of {self.num_processes}, coordinator "
                f"{self.coordinator_address} (from {self.source})")


def mode_from(flag_value: str, flag_given: bool, environ=os.environ) -> str:
    """auto | on | off: the flag if given, else ``$FGMASK_DISTRIBUTED``, else the flag default."""
    if flag_given:
        return flag_value
    value = environ.get(ENV_SWITCH, "").strip().lower()
    if value in ("", "auto"):
        return flag_value
    if value in ("1", "on", "true", "yes"):
        return "on"
    if value in ("0", "off", "false", "no"):
        return "off"
    raise errors.ConfigError(f"{ENV_SWITCH}={environ[ENV_SWITCH]!r}: use 1 (on), 0 (off) or auto")


def _parse_device_ids(text: str) -> tuple[int, ...] | str:
    """'auto' | 'all' | (ids...) from --local_device_ids."""
    text = text.strip().lower()
    if text in ("auto", "all"):
        return text
    try:
        ids = tuple(int(i) for i in text.split(","))
    except ValueError:
        raise errors.ConfigError(
            f"--local_device_ids={text!r}: use auto, all, or a comma-separated list like 0,1"
        ) from None
    if not ids or min(ids) < 0:
        raise errors.ConfigError(f"--local_device_ids={text!r}: device ids are integers >= 0")
    return ids


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A cluster job found in this process's environment variables."""

    name: str  # "slurm", "ompi" or "tpu"
    num_processes: int
    # Resolved here (SLURM); None: jax.distributed.initialize's own detection fills it in.
    coordinator_address: str | None = None
    process_id: int | None = None
    local_process_id: int | None = None
    one_task_per_node: bool = False


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: 'gpu[003-004],cpu1' -> 'gpu003'."""
    match = re.match(r"([^,\[]*)(?:\[([^\],-]*))?", nodelist.strip())
    return match.group(1) + (match.group(2) or "")


def detected_cluster(environ=os.environ) -> Cluster | None:
    """The cluster job this process belongs to, from its documented environment variables
    (nothing is contacted): a SLURM step started by ``srun`` (SLURM_JOB_ID, SLURM_NTASKS,
    SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NODELIST), an Open MPI ``mpirun``
    (OMPI_COMM_WORLD_SIZE), or a Cloud TPU pod slice (TPU_WORKER_HOSTNAMES, several hosts).
    None for anything else: a plain run, or a cluster that needs ``--distributed=on``."""
    if "SLURM_JOB_ID" in environ and "SLURM_PROCID" in environ:
        tasks = environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1"))
        nodes = environ.get("SLURM_STEP_NUM_NODES", environ.get("SLURM_NNODES", "1"))
        nodelist = environ.get("SLURM_STEP_NODELIST", environ.get("SLURM_JOB_NODELIST", ""))
        # JAX's rule for the port, so that a job may mix this with jax's own detection.
        port = environ.get("JAX_COORDINATOR_PORT") or str(
            int(environ["SLURM_JOB_ID"]) % 2**12 + 65535 - 2**12 + 1)
        local = environ.get("SLURM_LOCALID")
        return Cluster("slurm", int(tasks), f"{first_host(nodelist)}:{port}",
                       int(environ["SLURM_PROCID"]), int(local) if local else None,
                       one_task_per_node=tasks == nodes)
    if "OMPI_COMM_WORLD_SIZE" in environ:
        return Cluster("ompi", int(environ["OMPI_COMM_WORLD_SIZE"]))
    hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if hosts:
        return Cluster("tpu", len(hosts))
    return None


def plan(options: Options) -> Plan | None:
    """What to join, or None for a single-process run.

    Raises:
      ConfigError: contradictory or incomplete flags (the message says which).
    """
    explicit = {
        "--coordinator_address": options.coordinator_address,
        "--num_processes": options.num_processes,
        "--process_id": options.process_id,
    }
    given = [name for name, value in explicit.items() if value is not None]
    devices = _parse_device_ids(options.local_device_ids)
    chosen = devices if isinstance(devices, tuple) else None
    if options.mode == "off":
        if given:
            raise errors.ConfigError(f"{', '.join(given)} given, but --distributed=off (or "
                             f"{ENV_SWITCH}=0): drop one or the other")
        return None
    if given:
        if len(given) < 3 and options.mode != "on":
            missing = [name for name in explicit if name not in given]
            raise errors.ConfigError(
                f"{', '.join(given)} given without {', '.join(missing)}: a bare cluster needs "
                "all three (or --distributed=on to let JAX detect the rest)"
            )
        if len(given) == 3 and not options.process_id < options.num_processes:
            raise errors.ConfigError(f"--process_id={options.process_id} must be below "
                             f"--num_processes={options.num_processes}")
        if len(given) == 3:
            return Plan("flags", options.coordinator_address, options.num_processes,
                        options.process_id, chosen)
    try:
        cluster = detected_cluster()
    except ValueError as e:  # a cluster's variables that are not numbers
        raise errors.ConfigError(f"the cluster's environment variables do not parse ({e}); "
                                 "give --coordinator_address, --num_processes and "
                                 "--process_id, or --distributed=off") from None
    if cluster is None:
        if options.mode == "on":  # JAX's full detection: Kubernetes, JAX_COORDINATOR_ADDRESS
            return Plan("jax", options.coordinator_address, options.num_processes,
                        options.process_id, chosen)
        return None
    count = options.num_processes or cluster.num_processes
    if count <= 1 and options.mode == "auto":
        logging.info("%s job with one process: running alone", cluster.name)
        return None
    if cluster.name != "slurm":  # JAX's own detection resolves the rest (public API)
        return Plan("jax", options.coordinator_address, options.num_processes,
                    options.process_id, chosen)
    if devices == "auto" and not cluster.one_task_per_node:
        # JAX's rule: task i of a node drives GPU i
        chosen = (cluster.local_process_id,) if cluster.local_process_id is not None else None
    return Plan("slurm", options.coordinator_address or cluster.coordinator_address, count,
                options.process_id if options.process_id is not None else cluster.process_id,
                chosen)


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise errors.ConfigError(f"coordinator address {address!r}: use host:port")
    return host.strip("[]"), int(port)


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Returns once ``address`` accepts TCP connections; ClusterJoinError after ``timeout`` s."""
    host, port = _split_address(address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ClusterJoinError(
                    f"could not reach the coordinator at {address} within {timeout:g} s ({e}). "
                    "Check that process 0 of this job is running, that every process was given "
                    "the same --coordinator_address and --num_processes, and that the port is "
                    "open between the hosts; for slow starts raise --initialization_timeout."
                ) from None
            time.sleep(0.5)


def join(p: Plan, initialization_timeout: int = 300, heartbeat_timeout: int = 100) -> None:
    """``jax.distributed.initialize`` for plan ``p``, bounded in time.

    A process other than 0 first waits (at most ``initialization_timeout`` s) for the
    coordinator's port, so that an unreachable coordinator is a Python error with
    advice. Once connected, JAX itself enforces the timeouts: a process that is
    still missing after ``initialization_timeout`` s, or that stops sending
    heartbeats for ``heartbeat_timeout`` s, makes JAX abort every process with
    DEADLINE_EXCEEDED or "tasks are unhealthy".
    """
    import jax

    logging.info(
        "Joining the cluster: %s; waiting up to %d s for all processes. If this process "
        "aborts with DEADLINE_EXCEEDED, a process did not start or cannot reach the "
        "coordinator: see the other processes' logs.", p.describe(), initialization_timeout,
    )
    if p.process_id not in (None, 0) and p.coordinator_address:
        wait_for_coordinator(p.coordinator_address, initialization_timeout)
    kwargs = dict(
        coordinator_address=p.coordinator_address,
        num_processes=p.num_processes,
        process_id=p.process_id,
        local_device_ids=list(p.local_device_ids) if p.local_device_ids is not None else None,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout,
    )
    if p.source != "jax":
        # Everything is resolved: stop JAX from re-detecting, which would pin a
        # one-task-per-node SLURM job to a single GPU per node.
        kwargs["cluster_detection_method"] = "deactivate"
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as e:
        raise ClusterJoinError(
            f"jax.distributed.initialize failed for {p.describe()}: {e}. Give "
            "--coordinator_address, --num_processes and --process_id, or run the job "
            "through srun / on every TPU VM worker; it must run before any JAX computation."
        ) from e


def log_topology() -> None:
    """Logs this process's index and count, and its local and the global devices."""
    import jax

    local = jax.local_devices()
    logging.info("JAX process %d of %d on %s: %d local devices %s, %d global devices (%s)",
                 jax.process_index(), jax.process_count(), socket.gethostname(), len(local),
                 [d.id for d in local], jax.device_count(), jax.default_backend())


def maybe_initialize(options: Options | None = None) -> bool:
    """Joins the cluster if this run is a cluster job (see the module docstring).

    ``options``: what the command's flags ask for (`cli.cluster_options`); None is the
    flags' defaults and the environment. Call before any JAX computation. Returns True
    if this process joined a multi-process cluster, False for a single-process run.

    Raises:
      ConfigError: contradictory or incomplete flags (the message says which).
      ClusterJoinError: the coordinator could not be reached within the timeout.
    """
    import jax

    options = options or Options(mode=mode_from("auto", False))
    if jax.distributed.is_initialized():
        logging.info("jax.distributed is already initialized: joining nothing more")
        log_topology()
        return True
    p = plan(options)
    if p is None:
        return False  # a plain run: the training log names its device count
    join(p, options.initialization_timeout, options.heartbeat_timeout)
    log_topology()
    return True


def check_all_reduce() -> float:
    """Sums every process's index over all global devices; returns the sum (a smoke test)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
    local = np.full(jax.local_device_count(), jax.process_index(), np.float32)
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
    return float(total.addressable_data(0))


def devices_per_process(jax) -> dict[int, int]:
    counts: dict[int, int] = {}
    for d in jax.devices():
        counts[d.process_index] = counts.get(d.process_index, 0) + 1
    return counts


def smoke_check(options: Options) -> tuple[bool, str]:
    """(all-reduce right, one line on this process, its devices and the all-reduce): the
    check ``python -m fgmask_jax.distributed`` runs on every process of a job.

    Raises as `maybe_initialize`.
    """
    import jax

    joined = maybe_initialize(options)
    total = check_all_reduce()
    expected = sum(i * n for i, n in devices_per_process(jax).items())
    status = "OK" if total == expected else "WRONG"
    return status == "OK", (
        f"{status}: process {jax.process_index()} of {jax.process_count()} "
        f"({'joined a cluster' if joined else 'alone'}), {jax.local_device_count()} local "
        f"of {jax.device_count()} devices; all-reduce {total:g} (expected {expected:g})")
