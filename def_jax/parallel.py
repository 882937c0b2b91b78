"""Device meshes and shardings from the configuration.

The mesh has two axes: ``data`` (batch / ensemble members) and ``space`` (the y dimension of full-domain fields).
Axes are ``Auto``: arrays carry ``NamedSharding`` and XLA inserts the collectives (big_vision style), rather than
hand-written ``shard_map`` code -- which also avoids the shard_map gradient trap (a replicated parameter's gradient
already summed over the mesh, then ``pmean``-ed again). Multi-host runs start ``jax.distributed`` first
(:func:`initialize_distributed`) and feed each process's share of a batch through :func:`global_batch`.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

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
    spec: list = [None] * ndim
    spec[batch_axis] = DATA
    if mesh.shape[SPACE] > 1 and key in SPATIAL_Y_AXIS:
        spec[ndim + SPATIAL_Y_AXIS[key]] = SPACE
    return NamedSharding(mesh, PartitionSpec(*spec))


def global_batch(batch: dict, mesh: jax.sharding.Mesh, batch_axis: int = 0) -> dict:
    """This process's slice of the batch (NumPy) → global jax.Arrays sharded over the mesh (multi-host safe)."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, k, np.ndim(v), batch_axis), v)
            for k, v in batch.items()}


# --- multi-host --------------------------------------------------------------------------------------------------

CLUSTER_ENV = {"SLURM_NTASKS": "SLURM", "OMPI_COMM_WORLD_SIZE": "Open MPI"}


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
                           log=print) -> None:
    """Start ``jax.distributed`` before any other JAX use when this is a multi-process run.

    Explicit settings (config.parallel.coordinator_address etc.) win; otherwise JAX's own detection of SLURM and
    Open MPI launches (a task count above 1) is used; otherwise the run is single-process and nothing happens.
    """
    if coordinator_address:
        if num_processes < 1 or process_id < 0:
            raise UserError("config.parallel: with coordinator_address set, num_processes (>= 1) and process_id "
                            "(>= 0) are required")
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    else:
        launcher = next((name for var, name in CLUSTER_ENV.items() if int(os.environ.get(var, "1") or 1) > 1), None)
        if launcher is None:
            return
        jax.distributed.initialize()  # auto-detects the coordinator, process count and index
        log(f"jax.distributed: {launcher} launch detected")
    log(f"jax.distributed: process {jax.process_index()} of {jax.process_count()}, "
        f"{jax.local_device_count()} local / {jax.device_count()} global devices")
