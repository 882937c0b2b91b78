"""A test config: the demo preset shrunk to seconds (a 2-level U-Net of width 8) on the session's mini store.

Usable from the command line too: ``--config=tests/tiny_config.py:/path/to/store.zarr``.
"""

TINY_PERIODS = {"train": "2024-06-01T00:2024-06-02T15", "val": "2024-06-02T16:2024-06-02T23",
                "test": "2024-06-03T00:2024-06-03T11"}


def get_config(store: str):
    from configs.presets import get_config as preset

    cfg = preset("demo")
    cfg.data.store = str(store)
    cfg.data.levels = (500.0, 850.0)
    cfg.data.grid_shape = (32, 32)
    cfg.data.workers = 0  # in-process reading: a worker process per test run would cost more than it saves
    cfg.data.train_period, cfg.data.val_period, cfg.data.test_period = (TINY_PERIODS[k] for k in
                                                                          ("train", "val", "test"))
    for name in ("forecaster", "denoiser"):
        m = cfg[name]
        m.base_channels, m.channel_mults, m.num_res_blocks = 8, (1, 2), 1
        m.attention_levels, m.num_heads, m.norm_groups, m.time_embedding_dim = (1,), 2, 4, 32
    for t in (cfg.training.forecaster, cfg.training.diffusion):
        t.batch_size, t.max_steps, t.warmup_steps, t.learning_rate = 4, 6, 2, 1e-3
        t.eval_every, t.checkpoint_every, t.eval_batches, t.log_every = 3, 3, 2, 1
    cfg.training.tensorboard = False
    return cfg


def learning_config(store):
    """The tiny config for runs that must learn something: 30 steps each, validation and checkpoints at 15 and 30."""
    cfg = get_config(store)
    for t in (cfg.training.forecaster, cfg.training.diffusion):
        t.max_steps, t.eval_every, t.checkpoint_every, t.log_every = 30, 15, 15, 10
    cfg.training.diffusion.ema_decay = 0.99
    cfg.training.tensorboard = True
    return cfg


def forecast_config(store, **ensemble):
    """``learning_config`` with a small DEF ensemble (3 members, K = 1, λ = 0.5, 3 h in one compiled call, S = 3),
    ``ensemble`` overriding. (Lead chunks: tests/test_rollout.py, and the 240 h forecast of test_forecast_modes.py.)"""
    cfg = learning_config(store)
    cfg.ensemble.update(dict(members=3, walks=1, guidance_scale=0.5, lead_hours=3, lead_chunk=3), **ensemble)
    cfg.sampler.steps = 3
    return cfg
