"""vadray: semi-supervised video anomaly detection over video archives, on Ray."""

__version__ = "0.1.0"


def load_model(path: str, storage_options: dict | None = None):
    """(model, card) from a training run's CHECKPOINT_DIR or a checkpoint folder."""
    from vadray.checkpoint import load_model as _load

    return _load(path, storage_options=storage_options)
