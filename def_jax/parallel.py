"""Device meshes and shardings from the configuration.

The mesh has two axes: ``data`` (batch / ensemble members) and ``space`` (the y dimension of full-domain fields).
Axes are ``Auto``: arrays carry ``NamedSharding`` and XLA inserts the collectives (big_vision style), rather than
hand-written ``shard_map`` code -- which also avoids the shard_map gradient trap (a replicated parameter's gradient
already summed over the mesh, then ``pmean``-ed again). Multi-host runs start ``jax.distributed`` first
(:func:`initialize_distributed`) and feed each process's share of a batch through :func:`global_batch`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from def_jax.errors import UserError

DATA, SPACE = "data", "space"


def make_mesh(data_axis: int = -1, spatial_axis: int = 1, devices: Optional[Sequence] = None) -> jax.sharding.Mesh:
    """A ``(data, space)`` mesh over ``devices`` (default: all).

    Args:
      data_axis: devices along ``data``; -1 = all devices not used by ``space``.
      spatial_axis: devices along ``space`` (≥ 1).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if spatial_axis < 1 or n % spatial_axis:
        raise UserError(f"config.parallel.spatial_axis={spatial_axis} must be >= 1 and divide the {n} devices")
    data = n // spatial_axis if data_axis == -1 else data_axis
    if data < 1 or data * spatial_axis != n:
        raise UserError(
            f"config.parallel.data_axis={data_axis} × spatial_axis={spatial_axis} must equal the {n} devices"
        )
    return jax.make_mesh((data, spatial_axis), (DATA, SPACE), axis_types=(AxisType.Auto,) * 2, devices=devices)


def leading_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch/member) axis split over ``data``; everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


# --- batches -----------------------------------------------------------------------------------------------------

# Position of the grid's y axis in each batch entry (channels-last arrays): sharded over "space" when it has devices.
SPATIAL_Y_AXIS = {"inputs": -3, "targets": -3, "forcings": -3, "statics": -3, "area_weights": -2}


def batch_sharding(mesh: jax.sharding.Mesh, key: str, ndim: int, batch_axis: int = 0) -> NamedSharding:
    """Sharding of one batch entry: the batch axis over ``data``, the grid's y axis over ``space`` (if > 1)."""
    y_axis = ndim + SPATIAL_Y_AXIS[key] if key in SPATIAL_Y_AXIS else None
    return field_sharding(mesh, ndim, y_axis, member_axis=batch_axis)


def field_sharding(mesh: jax.sharding.Mesh, ndim: int, y_axis: Optional[int], member_axis: Optional[int] = None
                   ) -> NamedSharding:
    """Sharding of a field array: ``member_axis`` (if any) over ``data``, the grid's ``y_axis`` (if any) over
    ``space`` (when it has more than one device); the rest replicated."""
    spec: list = [None] * ndim
    if member_axis is not None:
        spec[member_axis] = DATA
    if y_axis is not None and mesh.shape[SPACE] > 1:
        spec[y_axis] = SPACE
    return NamedSharding(mesh, PartitionSpec(*spec))


def check_spatial(mesh: jax.sharding.Mesh, height: int) -> None:
    """A UserError when the grid's ``height`` rows do not split evenly over the ``space`` axis."""
    n = mesh.shape[SPACE]
    if height % n:
        raise UserError(f"config.parallel.spatial_axis={n} must divide the grid's {height} rows (y); choose a "
                        f"divisor of {height} or prepare a region whose rows it divides (prepare --region=Y0:Y1,...)")


def put(x, sharding: NamedSharding) -> jax.Array:
    """A host value (the same on every process) → a global array placed with ``sharding`` (multi-host safe: each
    process places its own devices' parts)."""
    return jax.device_put(np.asarray(x), sharding)


def fetch(x: jax.Array) -> np.ndarray:
    """The whole value of a (possibly multi-host) array on this host: every process gets all of it."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def agree(values: Sequence[bool]) -> list[bool]:
    """Process 0's ``values`` on every process (decisions such as which files are finished, taken once for all)."""
    if jax.process_count() == 1:
        return [bool(v) for v in values]
    from jax.experimental import multihost_utils

    agreed = multihost_utils.broadcast_one_to_all(np.asarray(values, np.int32))
    return [bool(v) for v in np.asarray(agreed)]


def reporting(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` on process 0, a log that says nothing on the others: in a multi-host run process 0 reports."""
    return log if jax.process_index() == 0 else _silent


def _silent(message: str) -> None:
    pass


def barrier(name: str) -> None:
    """Wait until every process has reached this point (multi-host); nothing in a single process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def write_owners(x: jax.Array) -> list:
    """The parts of ``x`` this process writes: one (index, local shard data) per distinct index of the array, taken
    by the process of the lowest-numbered device that holds it, so that replicated parts are written once."""
    owner: dict = {}
    for device, index in x.sharding.devices_indices_map(x.shape).items():
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in owner or device.id < owner[key].id:
            owner[key] = device
    mine = []
    for shard in x.addressable_shards:
        key = tuple((s.start, s.stop, s.step) for s in shard.index)
        if owner[key] == shard.device:
            mine.append((shard.index, shard.data))
    return mine


def global_batch(batch: dict, mesh: jax.sharding.Mesh, batch_axis: int = 0) -> dict:
    """This process's slice of the batch (NumPy) → global jax.Arrays sharded over the mesh (multi-host safe)."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, k, np.ndim(v), batch_axis), v)
            for k, v in batch.items()}


def gather_bytes(value: bytes) -> list[bytes]:
    """Every process's ``value`` in process order (a collective: every process calls it). For per-process state
    that one process saves for all, such as each process's position in its shard of the data."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    lengths = np.asarray(multihost_utils.process_allgather(np.array([len(value)], np.int32)))  # [P, 1]
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(value)] = np.frombuffer(value, np.uint8)
    every = np.asarray(multihost_utils.process_allgather(padded))  # [P, max length]
    return [every[i, :int(n)].tobytes() for i, n in enumerate(lengths[:, 0])]


# --- multi-host --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process takes part in a multi-process run, as the launcher set it up.

    Attributes:
      launcher: ``SLURM``, ``Open MPI`` or ``explicit`` (config.parallel / launch_multihost.sh).
      num_processes, process_id: the run's processes and this one's index.
      local_processes, local_process_id: the processes on this node and this one's index among them.
      local_device_ids: the accelerators (indices among those CUDA makes visible to the process) this process drives;
        None = all of them.
    """

    launcher: str
    num_processes: int
    process_id: int
    local_processes: int = 1
    local_process_id: int = 0
    local_device_ids: Optional[tuple[int, ...]] = None

    @property
    def layout(self) -> str:
        if self.local_device_ids is None:
            return "one process per node, driving all of its devices"
        return f"{self.local_processes} processes per node, this one driving device(s) {list(self.local_device_ids)}"


def _tasks_on_node(counts: str, node: int) -> int:
    """SLURM's tasks-per-node string ('4(x2)', '2,1', '3(x2),1') → the count of node ``node``."""
    per_node = []
    for part in counts.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise UserError(f"SLURM tasks per node {counts!r}: expected a list such as '4(x2)' or '2,1'")
        per_node += [int(match.group(1))] * int(match.group(2) or 1)
    if not 0 <= node < len(per_node):
        raise UserError(f"SLURM_NODEID={node} is outside the tasks per node {counts!r}")
    return per_node[node]


def _visible_gpus(env: Mapping[str, str]) -> Optional[int]:
    """How many GPUs CUDA_VISIBLE_DEVICES shows this process (None: unset, all of the node's)."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return len([v for v in value.split(",") if v.strip()])


def device_ids_for(local_processes: int, local_process_id: int, visible: Optional[int]) -> Optional[tuple[int, ...]]:
    """The devices one of ``local_processes`` processes on a node drives, given ``visible`` GPUs (None: unknown).

    One process on the node: all of its devices (None). Several: a process that sees one GPU (the launcher bound one
    to each task) drives it, device 0; otherwise the visible GPUs are split evenly and process i drives the i-th share
    (one GPU each when there are as many processes as GPUs, JAX's own rule for launcher-detected runs).
    """
    if local_processes <= 1:
        return None
    if visible == 1:
        return (0,)
    if visible is None or visible == local_processes:
        return (local_process_id,)
    if visible == 0 or visible % local_processes:
        raise UserError(f"{local_processes} processes on this node but {visible} visible GPUs "
                        f"(CUDA_VISIBLE_DEVICES): start one process per node or one per GPU")
    share = visible // local_processes
    return tuple(range(local_process_id * share, (local_process_id + 1) * share))


def launch_from_environment(env: Mapping[str, str]) -> Optional[Launch]:
    """The multi-process launch a SLURM step or an Open MPI ``mpirun`` set up, from their variables; None when the
    process was not started as one of several by either (JAX's detection applies to the same variables)."""
    if all(v in env for v in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")):
        n = int(env["SLURM_NTASKS"])
        if n <= 1:
            return None
        counts = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
        if counts:
            local = _tasks_on_node(counts, int(env.get("SLURM_NODEID", "0")))
        else:
            local = int(env.get("SLURM_NTASKS_PER_NODE", "1"))
        local_id = int(env["SLURM_LOCALID"])
        return Launch("SLURM", n, int(env["SLURM_PROCID"]), local, local_id,
                      device_ids_for(local, local_id, _visible_gpus(env)))
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        local = int(env.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1"))
        local_id = int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))
        return Launch("Open MPI", int(env["OMPI_COMM_WORLD_SIZE"]), int(env["OMPI_COMM_WORLD_RANK"]), local,
                      local_id, device_ids_for(local, local_id, _visible_gpus(env)))
    return None


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
                           log=print) -> Optional[Launch]:
    """Start ``jax.distributed`` before any other JAX use when this is a multi-process run; return its launch.

    Explicit settings (config.parallel.coordinator_address etc., as ``launch_multihost.sh`` passes them) win, and
    each such process drives all the devices it sees; otherwise a SLURM or Open MPI launch of several tasks is
    detected (:func:`launch_from_environment`) and JAX's own detection supplies the coordinator address; otherwise the
    run is single-process and nothing happens.

    JAX's detection alone would give every launcher-started process only device [local rank] -- with one task per
    node, one GPU of eight. The devices are therefore always passed; "all of them" is passed as an empty list,
    which jax 0.10.2's ``initialize`` leaves unrestricted (``tests/test_experiments.py`` checks this on the pinned
    version).
    """
    if coordinator_address:
        if num_processes < 1 or process_id < 0:
            raise UserError("config.parallel: with coordinator_address set, num_processes (>= 1) and process_id "
                            "(>= 0) are required")
        launch = Launch("explicit", int(num_processes), int(process_id))
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, local_device_ids=[])
    else:
        launch = launch_from_environment(os.environ)
        if launch is None:
            return None
        jax.distributed.initialize(num_processes=launch.num_processes, process_id=launch.process_id,
                                   local_device_ids=list(launch.local_device_ids or ()))
    log(f"jax.distributed: {launch.launcher} launch, process {jax.process_index()} of {jax.process_count()} "
        f"({launch.layout}); {jax.local_device_count()} local / {jax.device_count()} global devices")
    return launch
