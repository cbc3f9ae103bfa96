"""Evaluating language models: held-out loss of any causal LM on token ids (paper §3, Figure 1a).

The same function serves the book's suite on the corpus's validation split and, in the ``pythia`` preset, the
real Pythia checkpoints on a Pile sample: it only needs a ``transformers`` causal LM and token ids.
"""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

from satlib.config import setting
from satlib.metrics import anisotropy_from_unit_sum, singular_values


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
        logits = hidden.float() @ head.float().T  # float32 logits whatever the model's dtype
        losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                   reduction="sum")  # fmt: skip
        total += float(losses)
        count += batch[:, 1:].numel()
    return total / count


@torch.no_grad()
def anisotropy_profile(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 16) -> NDArray[np.float64]:
    """Anisotropy of the hidden states at every depth, from the embeddings to what the head reads (Figure 2).

    Streams over the windows keeping only a running sum of unit vectors per layer (memory O(layers x d)).
    The last entry is the final hidden state after the final layer norm, the input of the LM head.

    Returns:
        Shape (n_layers + 1,): embeddings, then each layer's output.
    """
    device = next(model.parameters()).device
    sums: list[torch.Tensor] = []
    count = 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size, :-1].to(device)
        outputs = model.base_model(input_ids=batch, output_hidden_states=True)
        states = [*outputs.hidden_states[:-1], outputs.last_hidden_state]
        units = [torch.nn.functional.normalize(h.reshape(-1, h.shape[-1]).double(), dim=-1).sum(0) for h in states]
        sums = units if not sums else [a + b for a, b in zip(sums, units, strict=True)]
        count += batch.numel()
    return np.array([anisotropy_from_unit_sum(total.cpu().numpy(), count) for total in sums])


def head_singular_values(model: torch.nn.Module) -> NDArray[np.float64]:
    """Singular values of the model's output head (V, d), in decreasing order (paper §4.2, Figures 4 and 5)."""
    return singular_values(model.get_output_embeddings().weight)


#: Measurements of a checkpoint, by name: each takes the model and the validation windows.
MEASUREMENTS = {
    "heldout_loss": lambda model, windows: heldout_loss(model, windows),
    "anisotropy_profile": lambda model, windows: anisotropy_profile(model, windows[:ANISOTROPY_WINDOWS]).tolist(),
    "head_singular_values": lambda model, windows: head_singular_values(model).tolist(),
}
#: Windows (of context + 1 tokens) whose hidden states enter the anisotropy: 32 x 128 = 4,096 tokens in tiny.
ANISOTROPY_WINDOWS = 32


#: The models and steps of the paper's Figure 1a, evaluated on 50k Pile tokens by the ``pythia`` preset.
FIGURE_1A_MODELS = ("pythia-14m", "pythia-31m", "pythia-70m", "pythia-160m", "pythia-410m")
FIGURE_1A_STEPS = (1000, 5000, *range(10_000, 143_001, 10_000), 143_000)
PILE_TOKENS, PILE_CONTEXT = 50_000, 2048


def pile_windows(
    n_tokens: int = PILE_TOKENS, context: int = PILE_CONTEXT, data_files: str | None = None
) -> torch.Tensor:
    """Windows of a Pile sample tokenized for Pythia (all Pythia models share one tokenizer), paper Figure 1a.

    ``data_files`` (a local JSON Lines file with a ``text`` field) replaces the streamed Pile.
    """
    from satlib.data import pile_sample
    from satlib.models import load_tokenizer

    tokenizer = load_tokenizer(pythia_models()[0], "pythia")
    needed = -(-n_tokens // context) * (context + 1)  # whole windows of context + 1 tokens
    source = {"dataset": "json", "data_files": data_files} if data_files else {}
    return evaluation_windows(pile_sample(tokenizer, needed, **source), context, n_tokens)


def pythia_models() -> tuple[str, ...]:
    """The Pythia models the ``pythia`` preset measures: Figure 1a's, or a parameter file's ``models`` setting."""
    return tuple(setting("models", FIGURE_1A_MODELS))


def default_checkpoints(preset: str) -> list[tuple[str, int]]:
    """What a preset measures: every checkpoint of the suite (``tiny``), or Figure 1a's Pythia checkpoints (the
    ``models`` and ``steps`` settings of a parameter file replace them)."""
    from satlib.models import checkpoint_steps, suite_names

    if preset == "pythia":
        return [(model, int(step)) for model in pythia_models() for step in setting("steps", FIGURE_1A_STEPS)]
    return [(model, step) for model in suite_names(preset) for step in checkpoint_steps(model, preset)]


def default_windows(preset: str) -> torch.Tensor:
    """What a preset measures on: the corpus's validation split (``tiny``), or a Pile sample (``pythia``; the
    ``pile_tokens``, ``pile_context`` and ``pile_files`` settings of a parameter file apply)."""
    if preset == "pythia":
        return pile_windows(setting("pile_tokens", PILE_TOKENS), setting("pile_context", PILE_CONTEXT),
                            setting("pile_files", None))  # fmt: skip
    from satlib.suite import suite_spec
    from satlib.tokenization import token_ids

    spec = suite_spec(preset)
    return evaluation_windows(token_ids("validation", spec.vocab_size), spec.context, spec.eval_tokens)


def measure(
    preset: str = "tiny",
    names: tuple[str, ...] = ("heldout_loss",),
    checkpoints: list[tuple[str, int]] | None = None,
    windows: torch.Tensor | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    executor: Executor | None = None,
) -> pd.DataFrame:
    """Measurements of many checkpoints through :func:`satlib.sweep.sweep`, each computed once and kept in the
    result store (``<cache>/results``).

    Args:
        preset: ``tiny`` (the book's suite) or ``pythia`` (the hub, or ``SATLIB_HUB_MIRROR``).
        names: keys of :data:`MEASUREMENTS`.
        checkpoints: (model, step) pairs; default :func:`default_checkpoints`.
        windows: (n, context + 1) token ids to measure on; default :func:`default_windows`.
        device, dtype: where and in which precision models run.
        executor: a ``concurrent.futures.Executor`` for the sweep (a process pool, a dask cluster, Slurm);
            None measures here, one checkpoint after another.

    Returns:
        Columns ``model``, ``width``, ``step``, ``tokens`` and one per measurement (floats, or lists for
        profiles and spectra).
    """
    from satlib.data import TOKENS_PER_STEP, paper_values
    from satlib.models import width_of
    from satlib.sweep import sweep, tasks_for

    unknown = set(names) - set(MEASUREMENTS)
    if unknown:
        raise ValueError(f"unknown measurements {sorted(unknown)}: use {sorted(MEASUREMENTS)}")
    checkpoints = default_checkpoints(preset) if checkpoints is None else checkpoints
    windows = default_windows(preset) if windows is None else windows
    table = sweep(tasks_for(preset, tuple(names), checkpoints), windows, executor=executor, device=device, dtype=dtype)
    if preset == "pythia":
        widths = paper_values("pythia_models").set_index("model").d_model.to_dict()
        tokens_per_step = TOKENS_PER_STEP
    else:
        from satlib.suite import suite_spec

        widths = {model: width_of(model) for model, _ in checkpoints}
        tokens_per_step = suite_spec(preset).tokens_per_step
    table.insert(2, "width", [int(widths[model]) for model in table.model])
    table.insert(4, "tokens", table.step * tokens_per_step)
    return table.drop(columns="preset")


def heldout_losses(preset: str = "tiny", **options: object) -> pd.DataFrame:
    """The live Figure 1a of a preset: the book's suite on its validation split (``tiny``), or Pythia-14M to
    410M on a Pile sample (``pythia``). Columns ``model``, ``width``, ``step``, ``tokens``, ``loss``."""
    return measure(preset, ("heldout_loss",), **options).rename(columns={"heldout_loss": "loss"})


def training_landmarks(measurements: pd.DataFrame, value: str, loss: str = "heldout_loss") -> pd.DataFrame:
    """Where a measurement jumps and peaks along training, and where the loss is lowest (paper Figure 3).

    Args:
        measurements: one row per checkpoint with ``model``, ``step``, ``tokens``, ``value`` and ``loss`` columns.
        value: the measurement to follow (e.g. last-layer anisotropy).
        loss: the loss column.

    Returns:
        One row per model (in order of appearance): step of the largest increase between consecutive
        checkpoints, peak value with its step, tokens and loss, step of the lowest loss, and the maximum over the
        last three quarters of training (the late phase where the paper sees saturation).
    """
    rows = {}
    for model, group in measurements.groupby("model", sort=False):
        group = group.sort_values("step").reset_index(drop=True)
        peak = int(np.nanargmax(group[value].to_numpy()))
        late = group[group.tokens >= 0.25 * group.tokens.max()]
        rows[model] = {
            "largest jump at step": int(group.step[int(np.nanargmax(group[value].diff().to_numpy()))]),
            "peak": float(group[value][peak]),
            "peak at step": int(group.step[peak]),
            "peak at tokens": int(group.tokens[peak]),
            "loss at peak": float(group[loss][peak]),
            "lowest loss at step": int(group.step[int(np.nanargmin(group[loss].to_numpy()))]),
            "late maximum": float(late[value].max()),
        }
    return pd.DataFrame.from_dict(rows, orient="index")
