"""Checkpoints: plain state_dict + JSON card, loadable without pickle, locally and on S3."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vadray
from vadray import checkpoint
from vadray.models import build, spec
from vadray.preprocess import NormStats

TINY = {"encoder_channels": [8, 4], "lstm_channels": [4, 4, 4]}


def _stats(size: int = 27) -> dict:
    return NormStats(size=size, num_frames=10, mean_image=np.full((size, size), 0.5, np.float32), std=0.2,
                     pixel_mean=0.5, pixel_std=0.2).to_dict()


def _card(model, model_id: str | None = None) -> dict:
    return {"model": spec(model), "input": {"size": 27, "T": 10, "strides": [1, 2, 3], "hop": 1},
            "norm_stats": _stats(), "model_id": model_id or checkpoint.model_id(model.name, model.state_dict())}


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
        checkpoint.save(str(tmp_path / "final"), model.state_dict(), _card(model, bad))
        with pytest.raises(ValueError, match=says):
            vadray.load_model(str(tmp_path))
    checkpoint.save(str(tmp_path / "final"), model.state_dict(), _card(model, good))
    assert vadray.load_model(str(tmp_path))[1]["model_id"] == good
    card = json.loads((tmp_path / "final" / "card.json").read_text())
    assert checkpoint.read_card(str(tmp_path)) == card


@pytest.mark.parametrize("edit,says", [
    (lambda c: c.pop("norm_stats"), "norm_stats cannot be read"),
    (lambda c: c["norm_stats"].update(mean_image_f32_b64="!!"), "norm_stats cannot be read"),
    (lambda c: c["norm_stats"].update(std=float("nan")), "norm_stats cannot be read"),
    (lambda c: c["input"].update(size=35), "norm_stats are for 27×27 frames"),
    (lambda c: c["input"].update(size=28), "S = 11 \\+ 8k"),
    (lambda c: c["input"].update(T=0), "T >= 1"),
    (lambda c: c["input"].update(T="ten"), "integer size and T"),
    (lambda c: c.pop("input"), "integer size and T"),
    (lambda c: c.update(model=["convlstm_ae"]), "is not {name, params}"),
])
def test_a_hand_edited_card_is_one_clear_error_before_any_work(tmp_path, edit, says):
    """Score's model actors and the report read these fields: a damaged card was a traceback
    inside an actor, long after the job started (training review)."""
    from vadray.exits import UsageError

    model = build("convlstm_ae", **TINY)
    card = _card(model)
    edit(card)
    checkpoint.save(str(tmp_path / "final"), model.state_dict(), card)
    with pytest.raises(UsageError, match=says):
        checkpoint.load_for_job(str(tmp_path))


def test_a_card_that_is_not_an_object_and_nan_weights_are_refused(tmp_path):
    from vadray.exits import UsageError

    model = build("convlstm_ae", **TINY)
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "card.json").write_text("[1, 2]")
    (tmp_path / "final" / "model.pt").write_bytes(checkpoint.weights_to_bytes(model.state_dict()))
    with pytest.raises(UsageError, match="not a JSON object"):
        checkpoint.load_for_job(str(tmp_path))
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    checkpoint.save(str(tmp_path / "final"), model.state_dict(), _card(model))   # its own id: only NaN is wrong
    with pytest.raises(UsageError, match="NaN or infinite weights"):
        checkpoint.load_for_job(str(tmp_path))


def test_a_card_is_strict_json_even_after_a_diverged_epoch(tmp_path):
    model = build("convlstm_ae", **TINY)
    card = dict(_card(model), history=[{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": float("nan")}])
    checkpoint.save(str(tmp_path / "final"), model.state_dict(), card)
    text = (tmp_path / "final" / "card.json").read_text()
    assert "NaN" not in text and json.loads(text)["history"][1]["val_loss"] is None


def test_a_non_finite_loss_ends_training_at_once_and_never_counts_as_best():
    from vadray.steps import end_of_epoch, fresh_state

    state = fresh_state()
    end_of_epoch(state, 1, 0.5, patience=10)
    end_of_epoch(state, 2, float("nan"), patience=10)
    assert (state["best_epoch"], state["stopped"]) == (1, "diverged")
    state = fresh_state()
    end_of_epoch(state, 1, float("inf"), patience=10)
    assert (state["best_epoch"], state["stopped"]) == (0, "diverged")


def test_round_trip_on_s3(s3_bucket):
    bucket, options = s3_bucket
    model = build("conv_ae", channels=[8, 4, 4])
    uri = f"s3://{bucket}/models/cam1"
    checkpoint.save(f"{uri}/final", model.state_dict(), _card(model), options)
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


def test_the_card_says_the_training_loss_chose_when_the_validation_videos_gave_no_volume():
    """Validation videos too short for one whole volume give a NaN validation loss, and the
    epochs were then chosen by the training loss while the card said "minimum validation loss"
    (train review)."""
    from types import SimpleNamespace

    model = build("convlstm_ae", **TINY)
    stats = NormStats.from_dict(_stats())
    info = SimpleNamespace(size=27, stats=stats, stats_doc={"source": "x"}, cameras=["c"])
    videos = [SimpleNamespace(video_id=v, num_frames=n) for v, n in (("a", 40), ("b", 40), ("short", 6))]
    settings = {"T": 10, "strides": [1], "hop": 1, "shards": "s", "lr": 1e-4, "batch_size": 8, "epochs": 2,
                "patience": 10, "seed": 0, "select": "val_loss"}
    errors = {"recon_error": np.linspace(1, 2, 20), "cell_error_max": np.linspace(1, 2, 20)}

    def card(val_loss):
        history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": val_loss} for e in (1, 2)]
        outcome = {"state": {"history": history, "stopped": None, "resumed_after_epochs": []},
                   "best_metrics": {"epoch": 2, "selection_loss": 0.5}}
        return checkpoint.model_card(info, settings, spec(model), model.state_dict(), outcome, errors,
                                     videos[:2], videos[2:], n_train=60, run_id="r")

    without = card(float("nan"))
    assert without["training"]["selection"] == "minimum training loss (the validation videos gave no volume)"
    assert without["best_val_loss"] is None
    normal = card(0.25)
    assert normal["training"]["selection"] == "minimum validation loss" and normal["best_val_loss"] == 0.25
