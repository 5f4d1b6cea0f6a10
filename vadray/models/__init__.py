"""Model registry: a name plus JSON-safe hyper-parameters builds a model; a card rebuilds it.

    model = build("convlstm_ae")                       # the paper's defaults
    model = build("conv_ae", T=10, channels=[64, 32, 16])
    spec(model) == {"name": "conv_ae", "params": {...}}   # what the checkpoint card stores
"""
from __future__ import annotations

from dataclasses import fields

from torch import nn

from vadray.models.conv_ae import ConvAE, ConvAEConfig
from vadray.models.convlstm_ae import ConvLSTMAE, ConvLSTMAEConfig

REGISTRY: dict[str, tuple[type, type]] = {
    "convlstm_ae": (ConvLSTMAE, ConvLSTMAEConfig),
    "conv_ae": (ConvAE, ConvAEConfig),
}


def params_help() -> str:
    """'name: key=default, …' for every architecture: what --model-params may set."""
    return "; ".join(f"{name}: " + ", ".join(f"{f.name}={f.default!r}".replace(" ", "") for f in fields(config))
                     for name, (_, config) in sorted(REGISTRY.items()))


def names() -> list[str]:
    return sorted(REGISTRY)


def _config(name: str, params: dict):
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}")
    config_cls = REGISTRY[name][1]
    known = {f.name for f in fields(config_cls)}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"model {name!r} has no parameter(s) {sorted(unknown)}; known: {sorted(known)}")
    # JSON turns tuples into lists; the configs hold tuples so that they stay hashable.
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})


def build(name: str, **params) -> nn.Module:
    """A freshly initialised model; raises ValueError for an unknown name or parameter."""
    config = _config(name, params)
    return REGISTRY[name][0](config)


def spec(model: nn.Module) -> dict:
    """{"name", "params"}: enough for `build` to make the same architecture again."""
    return {"name": model.name, "params": model.config.to_params()}


def check_size(name: str, size: int) -> None:
    """Raise ValueError when S×S frames do not fit the model's strides."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}")
    REGISTRY[name][0].check_size(size)
