"""Device meshes and shardings from the configuration.

The mesh has two axes: ``data`` (batch / ensemble members) and ``space`` (the y dimension of full-domain fields).
Axes are ``Auto``: arrays carry ``NamedSharding`` and XLA inserts the collectives (big_vision style), rather than
hand-written ``shard_map`` code. Multi-host initialization arrives with training (issue 4).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
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


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch/member) axis split over ``data``; everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
