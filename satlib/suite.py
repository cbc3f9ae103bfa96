"""The book's own model suite: small GPT-NeoX models trained on Pythia's recipe (paper §3, Biderman et al. 2023).

Pythia's recipe at small scale: ``transformers.GPTNeoXForCausalLM`` with an untied output head, rotary
embeddings on a quarter of each head, parallel residual; AdamW (0.9, 0.95, weight decay 0.01 on every parameter,
where GPT-NeoX exempts biases and layer norms: a simplification), gradient
clipping at 1, linear warm-up over 1% of the steps then cosine decay to 10% of the peak rate; the same data
order for every size; checkpoints at step 0, at powers of two, then evenly spaced, saved with
``save_pretrained`` (safetensors and config) so that a suite checkpoint loads like ``EleutherAI/pythia-*``.

Training is cached under a key of its whole specification, resumable (a killed run restarts from its last
resume point and ends with bitwise the same weights), and locked (two processes asking for the same model
train it once). The output layer dominates the cost at these widths, so the loss is a chunked cross-entropy
that never holds all logits at once (:class:`ChunkedCrossEntropy`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from numpy.typing import NDArray

from satlib.config import cache_dir, progress, write_atomically, write_directory_atomically


@dataclass(frozen=True)
class SuiteSpec:
    """Everything that defines a trained suite; its hash keys the cache.

    Attributes:
        preset: name of the preset the suite belongs to.
        widths: hidden sizes d of the models.
        n_layers: transformer layers of every model.
        head_dim: width of each attention head (heads = d / head_dim, at least one).
        vocab_size: BPE vocabulary of the corpus tokenizer.
        context: tokens per training sequence.
        batch_size: sequences per step.
        steps: optimisation steps (tokens per model = steps x batch_size x context).
        peak_lr: learning rate after warm-up.
        seed: seeds the data order (shared by all sizes) and the initialisation.
        eval_tokens: validation tokens used for the held-out loss of each checkpoint.
        checkpoints_evenly: number of evenly spaced checkpoints after the powers of two.
    """

    preset: str
    widths: tuple[int, ...]
    n_layers: int = 2
    head_dim: int = 16
    vocab_size: int = 4096
    context: int = 128
    batch_size: int = 16
    steps: int = 1200
    peak_lr: float = 3e-3
    seed: int = 0
    eval_tokens: int = 32_768
    checkpoints_evenly: int = 10
    warmup_fraction: float = field(default=0.01)
    final_lr_fraction: float = field(default=0.1)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.context

    def key(self) -> str:
        """Short hash of the whole specification (the cache key)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]

    def checkpoint_steps(self) -> list[int]:
        """Pythia's schedule shape: 0, then powers of two, then evenly spaced up to the last step."""
        powers = [2**k for k in range(int(math.log2(self.steps)) + 1) if 2**k < self.steps]
        spacing = max(1, self.steps // self.checkpoints_evenly)
        even = [*range(spacing, self.steps, spacing), self.steps]
        return sorted({0, *powers, *even})

    def learning_rate(self, step: int) -> float:
        """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to ``final_lr_fraction``."""
        warmup = max(1, round(self.warmup_fraction * self.steps))
        if step < warmup:
            return self.peak_lr * (step + 1) / warmup
        fraction = (step - warmup) / max(1, self.steps - warmup)
        floor = self.final_lr_fraction
        return self.peak_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * fraction)))

    def model_config(self, width: int):  # noqa: ANN201 - transformers is imported lazily
        """The ``GPTNeoXConfig`` of the model of hidden size ``width``."""
        from transformers import GPTNeoXConfig

        if width not in self.widths:
            raise ValueError(f"no model of width {width} in the {self.preset!r} suite: widths are {list(self.widths)}")
        return GPTNeoXConfig(
            vocab_size=self.vocab_size,
            hidden_size=width,
            num_hidden_layers=self.n_layers,
            num_attention_heads=max(1, width // self.head_dim),
            intermediate_size=4 * width,
            max_position_embeddings=self.context,
            rotary_pct=0.25,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )

    def parameter_count(self, width: int) -> int:
        """Parameters of the model of hidden size ``width`` (embedding and untied head included)."""
        from transformers import GPTNeoXForCausalLM

        return sum(parameter.numel() for parameter in GPTNeoXForCausalLM(self.model_config(width)).parameters())


#: The suite of each preset that trains models here (the ``pythia`` preset uses the real Pythia suite).
SUITES: dict[str, SuiteSpec] = {
    "tiny": SuiteSpec(preset="tiny", widths=(16, 32, 64, 128)),
}


def suite_spec(preset: str) -> SuiteSpec:
    """The suite of a preset, or a one-line error naming the presets that train one."""
    if preset not in SUITES:
        raise ValueError(f"preset {preset!r} trains no suite here: use one of {sorted(SUITES)}")
    return SUITES[preset]


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, computed ``chunk`` rows at a time.

    Forward keeps only each row's log-partition; backward recomputes each chunk's logits. Memory is
    O(chunk x V) instead of O(N x V), and each chunk's logits stay in cache.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:  # noqa: ANN001
        total = hidden.new_zeros(())
        log_partition = hidden.new_empty(hidden.shape[0])
        for start in range(0, hidden.shape[0], chunk):
            logits = hidden[start : start + chunk] @ weight.T
            lse = torch.logsumexp(logits, dim=-1)
            log_partition[start : start + chunk] = lse
            total += (lse - logits.gather(1, targets[start : start + chunk, None]).squeeze(1)).sum()
        ctx.save_for_backward(hidden, weight, targets, log_partition)
        ctx.chunk = chunk
        return total / hidden.shape[0]

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # noqa: ANN001
        hidden, weight, targets, log_partition = ctx.saved_tensors
        scale = grad_output / hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight)
        rows = torch.arange(min(ctx.chunk, hidden.shape[0]))
        for start in range(0, hidden.shape[0], ctx.chunk):
            block = hidden[start : start + ctx.chunk]
            probs = torch.exp(block @ weight.T - log_partition[start : start + ctx.chunk, None])
            probs[rows[: block.shape[0]], targets[start : start + ctx.chunk]] -= 1.0
            probs *= scale
            grad_hidden[start : start + ctx.chunk] = probs @ weight
            grad_weight += probs.T @ block
        return grad_hidden, grad_weight, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """Mean next-token cross-entropy of a linear head without materialising all logits.

    Args:
        hidden: (N, d) final hidden states.
        weight: (V, d) output head.
        targets: (N,) token ids.
        chunk: rows per block.
    """
    return ChunkedCrossEntropy.apply(hidden, weight, targets, chunk)


def batch_starts(spec: SuiteSpec, n_tokens: int, step: int) -> NDArray[np.int64]:
    """Start offsets of the sequences of one training step: the same for every model size.

    The training tokens are cut into non-overlapping windows of ``context + 1`` tokens, shuffled once per epoch
    by a generator seeded with (seed, epoch); step s takes the next ``batch_size`` windows.
    """
    windows = (n_tokens - 1) // (spec.context + 1)
    if windows < spec.batch_size:
        raise ValueError(f"the training split has {n_tokens} tokens: too few for one batch of this suite")
    first = step * spec.batch_size
    epoch, offset = divmod(first, windows)
    order = np.random.default_rng([spec.seed, epoch]).permutation(windows)
    picked = order[offset : offset + spec.batch_size]
    if picked.size < spec.batch_size:  # the batch straddles two epochs
        following = np.random.default_rng([spec.seed, epoch + 1]).permutation(windows)
        picked = np.concatenate([picked, following[: spec.batch_size - picked.size]])
    return picked.astype(np.int64) * (spec.context + 1)


def model_dir(spec: SuiteSpec, width: int) -> Path:
    """Cache folder of one model of a suite (checkpoints ``step<N>/`` and resume points)."""
    return cache_dir() / "suite" / f"{spec.preset}-{spec.key()}" / f"d{width}"


def _save_resume_point(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    from safetensors.torch import save_file

    names = {id(p): n for n, p in model.named_parameters()}

    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "weights.safetensors"))
        moments = {}
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                state = optimizer.state.get(parameter, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        moments[f"{names[id(parameter)]}.{key}"] = state[key].contiguous()
        save_file(moments, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step}))

    write_directory_atomically(folder / f"resume-{step:07d}", write)
    for older in folder.glob("resume-*"):
        if older.name != f"resume-{step:07d}" and not older.name.startswith("."):
            shutil.rmtree(older)


def _load_resume_point(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore the latest complete resume point; return its step (0 when there is none)."""
    from safetensors.torch import load_file

    points = sorted(p for p in folder.glob("resume-*") if (p / "state.json").is_file())
    if not points:
        return 0
    latest = points[-1]
    model.load_state_dict(load_file(str(latest / "weights.safetensors")))
    moments = load_file(str(latest / "optimizer.safetensors"))
    step = json.loads((latest / "state.json").read_text())["step"]
    for name, parameter in model.named_parameters():
        if f"{name}.exp_avg" in moments:
            optimizer.state[parameter] = {
                "step": torch.tensor(float(step)),
                "exp_avg": moments[f"{name}.exp_avg"],
                "exp_avg_sq": moments[f"{name}.exp_avg_sq"],
            }
    return step


def train_model(spec: SuiteSpec, width: int, train_ids: NDArray[np.uint16], stop_after: int | None = None) -> Path:
    """Train one model of the suite (or finish a killed run), saving every checkpoint; return its folder.

    Args:
        spec: the suite.
        width: the model's hidden size.
        train_ids: the tokenized training split.
        stop_after: stop after this many steps (to simulate an interrupted run in tests).
    """
    from transformers import GPTNeoXForCausalLM

    folder = model_dir(spec, width)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if (folder / "complete.json").is_file():
            return folder
        with open(folder / "trainers.log", "a") as log:  # one line per process that trained (tests read it)
            log.write(f"{os.getpid()}\n")
        torch.manual_seed(spec.seed)
        model = GPTNeoXForCausalLM(spec.model_config(width))
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=spec.peak_lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01
        )
        step = _load_resume_point(folder, model, optimizer)
        checkpoints = set(spec.checkpoint_steps())
        tokens = torch.from_numpy(np.array(train_ids, dtype=np.int64))
        offsets = torch.arange(spec.context + 1)
        bar = progress(total=spec.steps, initial=step, desc=f"{spec.preset} d={width}", unit="step", leave=False)
        save_checkpoint = lambda tmp: model.save_pretrained(tmp, safe_serialization=True)  # noqa: E731
        if step == 0:
            write_directory_atomically(folder / "step0", save_checkpoint)
        model.train()
        started, first_step = time.perf_counter(), step
        while step < spec.steps and (stop_after is None or step < stop_after):
            windows = tokens[torch.from_numpy(batch_starts(spec, len(tokens), step))[:, None] + offsets]
            for group in optimizer.param_groups:
                group["lr"] = spec.learning_rate(step)
            hidden = model.gpt_neox(input_ids=windows[:, :-1]).last_hidden_state
            loss = chunked_cross_entropy(
                hidden.reshape(-1, width), model.get_output_embeddings().weight, windows[:, 1:].reshape(-1)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            bar.update(1)
            if step in checkpoints:
                write_directory_atomically(folder / f"step{step}", save_checkpoint)
                _save_resume_point(folder, model, optimizer, step)
        bar.close()
        if step == spec.steps:
            seconds = time.perf_counter() - started
            record = {
                "spec": asdict(spec),
                "width": width,
                "trained_by_pid": os.getpid(),
                "seconds_this_run": round(seconds, 1),
                "tokens_per_second": round((step - first_step) * spec.tokens_per_step / max(seconds, 1e-9)),
            }
            write_atomically(folder / "complete.json", json.dumps(record))  # first: a kill now loses nothing
            for point in folder.glob("resume-*"):
                shutil.rmtree(point)
    return folder


def train_suite(preset: str = "tiny") -> list[Path]:
    """Train (or load from the cache) every model of a preset's suite."""
    from satlib.tokenization import token_ids

    spec = suite_spec(preset)
    train_ids = token_ids("train", spec.vocab_size)
    return [train_model(spec, width, train_ids) for width in spec.widths]


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m satlib.suite train [--preset tiny]``: train, then measure every checkpoint; also
    train and measure the models of :func:`satlib.saturation.shape_comparison`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m satlib.suite")
    parser.add_argument("command", choices=["train"])
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args(argv)
    from satlib.evaluate import MEASUREMENTS, measure

    spec = suite_spec(args.preset)
    for folder in train_suite(args.preset):
        record = json.loads((folder / "complete.json").read_text())
        print(f"{folder.name}: {spec.steps * spec.tokens_per_step} tokens; last training run "
              f"{record.get('seconds_this_run')} s at {record.get('tokens_per_second')} tokens/s")  # fmt: skip
    measurements = measure(args.preset, tuple(MEASUREMENTS))  # every chapter then reads them from the cache
    print(measurements.groupby("model", sort=False).heldout_loss.agg(["first", "min", "last"]).to_string())
    from satlib.saturation import shape_comparison

    shapes = shape_comparison(base_preset=args.preset)  # chapter 07's wider-versus-deeper models, same budget
    print(shapes.groupby("run", sort=False).heldout_loss.agg(["first", "min", "last"]).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
