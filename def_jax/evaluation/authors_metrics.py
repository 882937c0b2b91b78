"""The DEF authors' table variants of the CRPS and the energy score, for reproducing the paper's tables only.

Neither is a proper score (docs/FORECASTS.md); the project's scores are :mod:`def_jax.evaluation.metrics`'.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from def_jax.evaluation.metrics import _members_first


def authors_table_crps(ensemble, truth, key: jax.Array, *, member_axis: int = 0) -> jax.Array:
    """The DEF authors' table "CRPS" (not the CRPS): |x̄ − y| − ½ · mean over random disjoint member pairs |x_i − x_j|.

    One random permutation (from ``key``) pairs members (π1, π2), (π3, π4), …, the same pairs at every point (an odd
    last member is left out). Elementwise: average over points for the table value. Needs M ≥ 2.
    """
    ens, y = _members_first(ensemble, truth, member_axis)  # [M, ...], [...]
    m = ens.shape[0]
    if m < 2:
        raise ValueError("authors_table_crps needs at least 2 members (got 1)")
    pairs = jax.random.permutation(key, m)[:2 * (m // 2)].reshape(m // 2, 2)  # [M//2, 2]
    pair_mean = jnp.mean(jnp.abs(ens[pairs[:, 0]] - ens[pairs[:, 1]]), axis=0)  # [...]
    return jnp.abs(jnp.mean(ens, axis=0) - y) - 0.5 * pair_mean


def authors_table_energy(ensemble, truth, *, member_axis: int = 0, event_axes: Sequence[int] | int) -> jax.Array:
    """The DEF authors' table "energy" (not the energy score): RMSE(x̄ − y) − ½ · mean_{m<M} RMSE(x_m − x_{m+1}),
    each RMSE the root mean square over ``event_axes`` (axes of ``truth``), members in their stored order."""
    ens, y = _members_first(ensemble, truth, member_axis)  # [M, ...], [...]
    m = ens.shape[0]
    if m < 2:
        raise ValueError("authors_table_energy needs at least 2 members (got 1)")
    axes = (event_axes,) if isinstance(event_axes, int) else tuple(event_axes)
    axes = tuple(sorted({a % y.ndim for a in axes}))
    rms = lambda v, ax: jnp.sqrt(jnp.mean(jnp.square(v), axis=ax))
    skill = rms(jnp.mean(ens, axis=0) - y, axes)  # [...]
    adjacent = rms(ens[1:] - ens[:-1], tuple(a + 1 for a in axes))  # [M−1, ...]
    return skill - 0.5 * jnp.mean(adjacent, axis=0)
