"""The Grain input pipeline: shuffled, sharded, cropped, batched, checkpointable samples of a :class:`WindowSource`.

Structure (Grain 0.2.18)::

    WindowKeys (window positions 0..N-1)
      → grain.DataLoader(IndexSampler(N, shuffle, seed, num_epochs), ShardOptions(process index, process count),
                         operations=[ReadWindow: a RandomMap drawing the crop and reading the sample], worker_count)
      → BatchIterator: stacks batch_size consecutive samples in this process

* Shuffling: the sampler shuffles all N windows globally with ``seed`` (a new permutation each epoch); ``num_epochs``
  None repeats forever.
* Sharding: the DataLoader gives process ``p`` of ``P`` the global sample positions ``p, p + P, p + 2P, …`` (disjoint;
  together they cover every position except a final remainder of fewer than ``P``). Defaults come from
  ``jax.process_index()`` / ``jax.process_count()``.
* Crops: :class:`ReadWindow` is a Grain ``RandomMap``; Grain hands it ``np.random.Generator(Philox(seed + position))``
  where ``position`` counts samples over all epochs, so a crop depends only on (seed, epoch, sample) — reproducible,
  different across samples and epochs, and restored with the iterator's state. The crop is drawn before reading, so
  only the region is read and normalized, and the same crop applies to inputs, targets, forcings and statics.
* Batching happens in the consuming process, after the workers: Grain's own ``Batch`` runs inside each worker on that
  worker's slice of the stream, so batch composition (and which remainders are dropped) would depend on
  ``worker_count`` (measured: with 2 workers and batch 4, batches [0,2,4,6], [1,3,5,7], …). Here batches are the
  same for every ``worker_count``; workers send single samples through shared memory.
* State: ``BatchIterator.get_state()`` / ``set_state()`` are the DataLoader iterator's (JSON bytes); a restored
  iterator continues with exactly the next batch. The state records ``worker_count``; restore with the same count.

Worker processes (``worker_count > 0``) are spawned, not forked: scripts that build a loader need an
``if __name__ == "__main__":`` guard. Grain 0.2.18 reads its absl flags when it starts workers and raises
``UnparsedFlagAccessError`` outside ``absl.app.run``; :func:`make_loader` then marks the absl flags as parsed
(their defaults), which is what ``absl.app.run`` would have done.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterator, Optional, Sequence

import grain
import numpy as np

from def_jax.data import schema, windows
from def_jax.data.source import WindowSource, crop_region
from def_jax.data.store import store_time_axis, stride_for
from def_jax.errors import UserError

SPLITS = ("train", "val", "test")


class WindowKeys:
    """Grain data source of window positions ``0..N-1`` of a :class:`WindowSource` (reading happens in
    :class:`ReadWindow`, once the crop is drawn). Its ``repr`` names the windows and the crop, so Grain restores a
    saved iterator state only onto the same store (path), split, window definition and crop shape."""

    def __init__(self, source: WindowSource, crop_shape: tuple[int, int] = (0, 0)):
        self._len = len(source)
        self._repr = f"WindowKeys({source!r}, crop_shape={tuple(crop_shape)})"

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self._len:
            raise IndexError(f"window {index} out of range [0, {self._len})")
        return int(index)

    def __repr__(self) -> str:
        return self._repr


@dataclasses.dataclass
class ReadWindow(grain.transforms.RandomMap):
    """Draw the sample's crop offsets from Grain's per-sample rng, then read and normalize that region."""

    source: WindowSource
    crop_shape: tuple[int, int] = (0, 0)

    def random_map(self, element: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        region = crop_region(self.source.grid_shape, self.crop_shape, rng)
        return self.source.read(int(element), region)


def stack_samples(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batch a list of sample dicts: every array gets a leading batch axis [B, ...]."""
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}


def _process_shard(shard_index: Optional[int], shard_count: Optional[int]) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax  # lazy: workers and data-only scripts need not import JAX

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise UserError(f"shard_index {shard_index} must be in [0, shard_count = {shard_count})")
    return int(shard_index), int(shard_count)


def _allow_grain_workers() -> None:
    """Grain reads absl flags when starting workers; mark them parsed (defaults) if no absl app did (module doc)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """Batches of a DataLoader's samples, with the DataLoader iterator's checkpointable state."""

    def __init__(self, loader: "Loader", state: Optional[bytes] = None):
        self._loader = loader
        self._it = iter(loader.data_loader)
        if state is not None:
            self.set_state(state)

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        samples = []
        for _ in range(self._loader.batch_size):
            try:
                samples.append(next(self._it))
            except StopIteration:
                break
        if not samples or (len(samples) < self._loader.batch_size and self._loader.drop_remainder):
            raise StopIteration
        return stack_samples(samples)  # each [B, ...]

    def get_state(self) -> bytes:
        """The position after the last batch returned (JSON bytes; save it with the model checkpoint)."""
        return self._it.get_state()

    def set_state(self, state: bytes) -> None:
        """Continue after the batch at which ``state`` was saved (by a loader with the same ``worker_count``)."""
        try:
            saved = json.loads(state).get("worker_count")
        except (ValueError, AttributeError):
            saved = None  # not Grain's JSON: Grain's own error names it
        if saved is not None and int(saved) != self._loader.worker_count:
            raise UserError(f"the saved input-pipeline position was recorded with data.workers={saved}, this run has "
                            f"data.workers={self._loader.worker_count}: resume with --config.data.workers={saved} "
                            f"(Grain restores a position only with the same number of worker processes)")
        self._it.set_state(state)

    def close(self) -> None:
        """Stop worker processes (also done, less promptly, on garbage collection)."""
        close = getattr(getattr(self._it, "_iterator", None), "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "BatchIterator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclasses.dataclass
class Loader:
    """An iterable of batches; ``iter(loader)`` starts at the beginning, ``loader.iterator(state)`` resumes."""

    data_loader: grain.DataLoader
    source: WindowSource
    batch_size: int
    drop_remainder: bool
    worker_count: int = 0

    def __iter__(self) -> BatchIterator:
        return BatchIterator(self)

    def iterator(self, state: Optional[bytes] = None) -> BatchIterator:
        return BatchIterator(self, state)


def make_loader(source: WindowSource, *, batch_size: int, seed: int = 0, shuffle: bool = True,
                num_epochs: Optional[int] = None, drop_remainder: bool = True,
                crop_shape: Sequence[int] = (0, 0), worker_count: int = 0, worker_buffer_size: Optional[int] = None,
                shard_index: Optional[int] = None, shard_count: Optional[int] = None) -> Loader:
    """Batches of ``source`` (module docstring).

    Args:
      source: the windows of one split.
      batch_size: samples per batch in this process (the global batch is ``batch_size × shard_count``).
      seed: shuffling and crop seed (0 ≤ seed < 2³²).
      shuffle: shuffle the windows (training); False keeps time order (evaluation).
      num_epochs: passes over the windows; None = forever.
      drop_remainder: drop a final partial batch (training); keep it for evaluation.
      crop_shape: (h, w) random crop; (0, 0) = the full grid.
      worker_count: Grain worker processes (0 = read in this process).
      worker_buffer_size: samples each worker prepares ahead (default ``batch_size``).
      shard_index, shard_count: this process's shard (default: JAX process index and count).
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be ≥ 1; got {batch_size}")
    if worker_count < 0:
        raise UserError(f"data.workers must be ≥ 0; got {worker_count}")
    if not 0 <= int(seed) < 2**32:
        raise UserError(f"seed must be in [0, 2**32); got {seed}")
    crop = tuple(int(c) for c in crop_shape)
    if len(crop) != 2:
        raise UserError(f"data.crop_shape must be (h, w); got {tuple(crop_shape)}")
    crop_region(source.grid_shape, crop, np.random.default_rng(0))  # validate against the grid now
    index, count = _process_shard(shard_index, shard_count)
    sampler = grain.samplers.IndexSampler(num_records=len(source), shuffle=shuffle, num_epochs=num_epochs,
                                          seed=int(seed), shard_options=grain.sharding.NoSharding())
    if worker_count > 0:
        _allow_grain_workers()
    data_loader = grain.DataLoader(
        data_source=WindowKeys(source, crop), sampler=sampler, operations=[ReadWindow(source, crop)],
        worker_count=worker_count, worker_buffer_size=worker_buffer_size or batch_size,
        shard_options=grain.sharding.ShardOptions(shard_index=index, shard_count=count),
        read_options=grain.ReadOptions(num_threads=0, prefetch_buffer_size=0),  # keys are free; reads are in the map
    )
    return Loader(data_loader, source, int(batch_size), bool(drop_remainder), int(worker_count))


def source_from_config(data: Any, split: str, *, lead_steps: int = 1, history: Optional[int] = None,
                       store: Optional[str] = None) -> WindowSource:
    """The :class:`WindowSource` of ``split`` (train/val/test) from the ``data`` config section."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    return WindowSource(
        store or data.store, history=data.history if history is None else history, lead_steps=lead_steps,
        period=getattr(data, f"{split}_period"), split=split, normalization=data.normalization,
        statics=tuple(data.statics), time_encodings=data.time_encodings, dt_hours=data.dt_hours,
        in_memory=bool(data.in_memory))


def loader_from_config(config: Any, split: str, *, batch_size: int, lead_steps: int = 1,
                       history: Optional[int] = None, num_epochs: Optional[int] = None, **kw: Any) -> Loader:
    """Training (shuffled, cropped, remainder dropped) or evaluation (time order, full grid) batches of ``split``."""
    source = source_from_config(config.data, split, lead_steps=lead_steps, history=history)
    train = split == "train"
    kw.setdefault("shuffle", train)
    kw.setdefault("drop_remainder", train)
    kw.setdefault("crop_shape", tuple(config.data.crop_shape) if train else (0, 0))
    kw.setdefault("worker_count", int(config.data.workers))
    kw.setdefault("seed", int(config.seed))
    if num_epochs is None and not train:
        num_epochs = 1  # evaluation: one pass; training: forever unless given
    return make_loader(source, batch_size=batch_size, num_epochs=num_epochs, **kw)


def split_window_counts(data: Any, *, lead_steps: int = 1, history: Optional[int] = None,
                        store: Optional[str] = None, allow_empty: bool = False) -> dict[str, int]:
    """Valid windows per split of the ``data`` config section; a UserError names a split without any (unless
    ``allow_empty``) or overlapping periods."""
    path = str(store or data.store)
    times, status, store_dt = store_time_axis(schema.open_store(path))  # [T], [T], hours
    periods = {s: getattr(data, f"{s}_period") for s in SPLITS}
    starts = windows.split_windows(times, status, periods, history=data.history if history is None else history,
                                   lead_steps=lead_steps, stride=stride_for(data.dt_hours, store_dt, path),
                                   dt=np.timedelta64(int(round(store_dt * 3600e9)), "ns"), allow_empty=allow_empty)
    return windows.window_counts(starts)
