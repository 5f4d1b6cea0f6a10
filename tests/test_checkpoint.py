"""Checkpoints: plain state_dict + JSON card, loadable without pickle, locally and on S3."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vadray
from vadray import checkpoint
from vadray.models import build, spec

TINY = {"encoder_channels": [8, 4], "lstm_channels": [4, 4, 4]}


def _card(model) -> dict:
    return {"model": spec(model), "input": {"size": 27, "T": 10, "strides": [1, 2, 3], "hop": 1},
            "model_id": checkpoint.model_id("convlstm_ae", model.state_dict())}


def test_final_folder_round_trip_through_load_model(tmp_path):
    torch.manual_seed(0)
    model = build("convlstm_ae", **TINY)
    checkpoint.save(str(tmp_path / "run" / checkpoint.FINAL_DIR), model.state_dict(), _card(model))

    # The weights are a plain state_dict: torch.load with weights_only=True, no pickle of code.
    weights = torch.load(tmp_path / "run" / "final" / "model.pt", weights_only=True)
    assert set(weights) == set(model.state_dict())
    card = json.loads((tmp_path / "run" / "final" / "card.json").read_text())
    assert card["model"] == {"name": "convlstm_ae", "params": {**TINY, "lstm_kernel": 3, "peephole": True}}

    x = torch.randn(1, 10, 1, 27, 27)
    with torch.no_grad():
        expected = model.eval()(x)
    for path in (tmp_path / "run", tmp_path / "run" / "final"):  # CHECKPOINT_DIR or the folder
        loaded, loaded_card = vadray.load_model(str(path))
        assert not loaded.training
        assert loaded_card == card
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), expected)


def test_model_id_follows_the_weights_not_the_file(tmp_path):
    torch.manual_seed(0)
    a = build("convlstm_ae", **TINY)
    b = build("convlstm_ae", **TINY)
    b.load_state_dict(a.state_dict())
    assert checkpoint.model_id("convlstm_ae", a.state_dict()) == checkpoint.model_id("convlstm_ae", b.state_dict())
    with torch.no_grad():
        b.decoder[-1].bias += 1e-3
    assert checkpoint.model_id("convlstm_ae", a.state_dict()) != checkpoint.model_id("convlstm_ae", b.state_dict())
    assert checkpoint.model_id("convlstm_ae", a.state_dict()).startswith("convlstm_ae-")


def test_a_folder_without_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "card.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.pt"):
        vadray.load_model(str(tmp_path))


def test_a_card_whose_model_id_is_not_its_weights_is_refused(tmp_path):
    """The model id names every scored video's files: a crafted one wrote outside OUTPUT
    (security review), and one that is not the weights' own would mislabel the tables."""
    import json

    model = build("conv_ae", channels=[8, 4, 4])
    good = checkpoint.model_id("conv_ae", model.state_dict())
    for bad, says in (("conv_ae-x/" + "../" * 6 + "tmp/escaped", "is not <model>-<12 hex digits>"),
                      ("conv_ae-0123456789ab", "is not the id of the weights")):
        checkpoint.save(str(tmp_path / "final"), model.state_dict(), {"model": spec(model), "model_id": bad})
        with pytest.raises(ValueError, match=says):
            vadray.load_model(str(tmp_path))
    checkpoint.save(str(tmp_path / "final"), model.state_dict(), {"model": spec(model), "model_id": good})
    assert vadray.load_model(str(tmp_path))[1]["model_id"] == good
    card = json.loads((tmp_path / "final" / "card.json").read_text())
    assert checkpoint.read_card(str(tmp_path)) == card


def test_round_trip_on_s3(s3_bucket):
    bucket, options = s3_bucket
    model = build("conv_ae", channels=[8, 4, 4])
    uri = f"s3://{bucket}/models/cam1"
    card = {"model": spec(model), "model_id": checkpoint.model_id("conv_ae", model.state_dict())}
    checkpoint.save(f"{uri}/final", model.state_dict(), card, options)
    loaded, card = vadray.load_model(uri, storage_options=options)
    assert card["model"]["name"] == "conv_ae"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_distribution_summarises_finite_values_only():
    values = np.array([1.0, 2.0, 3.0, 4.0, np.nan, np.inf])
    summary = checkpoint.distribution(values)
    assert summary["n"] == 4
    assert summary["mean"] == pytest.approx(2.5)
    assert summary["std"] == pytest.approx(np.std([1, 2, 3, 4]))
    assert summary["quantiles"]["0.5"] == pytest.approx(2.5)
    assert set(summary["quantiles"]) == {"0.5", "0.9", "0.95", "0.99", "0.999"}
    assert checkpoint.distribution(np.array([np.nan]))["n"] == 0
