"""Evaluating language models: held-out loss of any causal LM on token ids (paper §3, Figure 1a).

The same function serves the book's suite on the corpus's validation split and, in the ``pythia`` preset, the
real Pythia checkpoints on a Pile sample: it only needs a ``transformers`` causal LM and token ids.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

from satlib.config import progress


def evaluation_windows(token_ids: NDArray, context: int, n_tokens: int) -> torch.Tensor:
    """Non-overlapping windows of ``context + 1`` tokens from the start of ``token_ids``, shape (n, context + 1).

    Enough windows to score at least ``n_tokens`` predictions (fewer if the ids run out); deterministic.
    """
    ids = np.asarray(token_ids)
    available = (len(ids) - 1) // (context + 1)
    count = min(available, -(-n_tokens // context))
    if count < 1:
        raise ValueError(f"{len(ids)} tokens are too few for one window of {context + 1}")
    return torch.from_numpy(ids[: count * (context + 1)].astype(np.int64).reshape(count, context + 1))


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats) of ``model`` on (n, context + 1) windows of token ids."""
    device = next(model.parameters()).device
    head = model.get_output_embeddings().weight
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device)
        hidden = model.base_model(input_ids=batch[:, :-1]).last_hidden_state
        logits = (hidden @ head.T).float()
        losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                   reduction="sum")  # fmt: skip
        total += float(losses)
        count += batch[:, 1:].numel()
    return total / count


#: The models and steps of the paper's Figure 1a, evaluated on 50k Pile tokens by the ``pythia`` preset.
FIGURE_1A_MODELS = ("pythia-14m", "pythia-31m", "pythia-70m", "pythia-160m", "pythia-410m")
FIGURE_1A_STEPS = (1000, 5000, *range(10_000, 143_001, 10_000), 143_000)


def pythia_pile_losses(
    names: tuple[str, ...] = FIGURE_1A_MODELS,
    steps: tuple[int, ...] = FIGURE_1A_STEPS,
    n_tokens: int = 50_000,
    context: int = 2048,
    data_files: str | None = None,
    device: str = "cpu",
) -> pd.DataFrame:
    """Pythia's cross-entropy on a Pile sample at each checkpoint (paper Figure 1a), with :func:`heldout_loss`.

    ``data_files`` (a local JSON Lines file with a ``text`` field) replaces the streamed Pile.

    Models come from :func:`satlib.models.load` with the ``pythia`` preset (the hub, or ``SATLIB_HUB_MIRROR``);
    the sample from :func:`satlib.data.pile_sample`, tokenized with the final checkpoint's tokenizer (all
    Pythia models share it). Same columns as :func:`suite_heldout_losses`.
    """
    from satlib.data import TOKENS_PER_STEP, paper_values, pile_sample
    from satlib.models import load, load_tokenizer

    widths = paper_values("pythia_models").set_index("model").d_model
    tokenizer = load_tokenizer(names[0], "pythia")
    needed = -(-n_tokens // context) * (context + 1)  # whole windows of context + 1 tokens
    source = {"dataset": "json", "data_files": data_files} if data_files else {}
    windows = evaluation_windows(pile_sample(tokenizer, needed, **source), context, n_tokens)
    rows = []
    for name, step in progress([(n, s) for n in names for s in steps], desc="Pythia on the Pile", unit="checkpoint"):
        loss = heldout_loss(load(name, step, "pythia", device=device), windows, batch_size=4)
        rows.append({"model": name, "width": int(widths[name]), "step": step, "tokens": step * TOKENS_PER_STEP,
                     "loss": loss})  # fmt: skip
    return pd.DataFrame(rows)


def heldout_losses(preset: str) -> pd.DataFrame:
    """The live Figure 1a of a preset: the book's suite on its validation split (``tiny``), or Pythia on a
    Pile sample (``pythia``). Columns ``model``, ``width``, ``step``, ``tokens``, ``loss``."""
    return pythia_pile_losses() if preset == "pythia" else suite_heldout_losses(preset)


def suite_heldout_losses(preset: str = "tiny") -> pd.DataFrame:
    """Held-out loss of every checkpoint of every model of a preset's suite (the live Figure 1a).

    Each value is computed once and cached beside its checkpoint (``heldout_loss.json``).

    Returns:
        Columns ``model``, ``width``, ``step``, ``tokens``, ``loss``.
    """
    from satlib.models import checkpoint_steps, load, model_path, suite_names, width_of
    from satlib.suite import suite_spec
    from satlib.tokenization import token_ids

    spec = suite_spec(preset)
    windows = evaluation_windows(token_ids("validation", spec.vocab_size), spec.context, spec.eval_tokens)
    rows = []
    tasks = [(name, step) for name in suite_names(preset) for step in checkpoint_steps(name, preset)]
    for name, step in progress(tasks, desc="held-out loss", unit="checkpoint", leave=False):
        cache = model_path(name, step, preset) / "heldout_loss.json"
        key = {"eval_tokens": spec.eval_tokens, "split": "validation"}
        if cache.is_file() and json.loads(cache.read_text())["key"] == key:
            loss = json.loads(cache.read_text())["loss"]
        else:
            loss = heldout_loss(load(name, step, preset), windows)
            handle, temporary = tempfile.mkstemp(dir=cache.parent, prefix=".heldout.")
            with os.fdopen(handle, "w") as stream:
                json.dump({"key": key, "loss": loss}, stream)
            os.replace(temporary, cache)
        rows.append({"model": name, "width": width_of(name), "step": step, "tokens": step * spec.tokens_per_step,
                     "loss": loss})  # fmt: skip
    return pd.DataFrame(rows)
