"""Training GPT-NeoX models on Pythia's recipe at small scale (training layer; paper §3, Biderman et al. 2023).

Pythia's recipe: ``transformers.GPTNeoXForCausalLM`` with an untied output head, rotary embeddings on a quarter of
each head, parallel residual; AdamW (0.9, 0.95) with gradient clipping at 1; linear warm-up then cosine decay
(or a constant rate, :class:`satlib.specs.SuiteSpec`); the same data order for every size; checkpoints at step 0,
at powers of two, then evenly spaced, saved with ``save_pretrained`` (safetensors, config and the checksums of
both) so that a checkpoint loads like ``EleutherAI/pythia-*``.

The training data is a :class:`BatchSource`: windows of the offline corpus (:class:`CorpusBatches`), or any
endless stream (the synthetic language of the controlled experiment). A model is cached under its suite's
specification and its data's identity; training is resumable (a killed run restarts from its last resume point
and ends with bitwise the same weights), locked (two processes train a model once), single-threaded (so that the
weights do not depend on the machine's core count) and checked: :func:`ensure_trained` retrains exactly the
models whose checkpoints are missing or fail their checksums. The output layer dominates the cost at these
widths, so the loss is a chunked cross-entropy that computes each softmax once (:class:`ChunkedCrossEntropy`).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from filelock import FileLock
from numpy.typing import NDArray
from safetensors.torch import load_file, save_file
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from satlib.config import source_commit
from satlib.errors import ConfigurationError
from satlib.models import Checkpoint, corpus_data_id, model_dir, trained_checkpoint
from satlib.specs import SuiteSpec
from satlib.storage import damaged_files, progress, read_json, write_atomically, write_directory_atomically
from satlib.tokenization import token_ids


def model_config(spec: SuiteSpec, width: int) -> GPTNeoXConfig:
    """The ``GPTNeoXConfig`` of the model of hidden size ``width`` of a suite."""
    if width not in spec.widths:
        raise ConfigurationError(
            f"no model of width {width} in the suite {spec.name!r}: widths are {list(spec.widths)}"
        )
    return GPTNeoXConfig(
        vocab_size=spec.vocab_size,
        hidden_size=width,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=max(1, width // spec.head_dim),
        intermediate_size=4 * width,
        max_position_embeddings=spec.context,
        rotary_pct=0.25,
        use_parallel_residual=spec.parallel_residual,
        tie_word_embeddings=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )


def parameter_count(spec: SuiteSpec, width: int) -> int:
    """Parameters of the model of hidden size ``width`` (embedding and untied head included)."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = GPTNeoXForCausalLM(model_config(spec, width))
    return sum(parameter.numel() for parameter in model.parameters())


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, computed ``chunk`` rows at a time.

    Forward turns each chunk's logits into probabilities in place and keeps them for backward, whose gradient
    ``(softmax - onehot) / N`` then costs no second matrix product and no second exponential. Chunks stay small
    (``chunk`` x V floats) so that the allocator reuses their memory instead of mapping fresh pages every step;
    the probabilities of all N rows (N x V floats, 32 MB for the tiny suite's steps) live until backward, which
    overwrites them with the gradient (so the graph is differentiated once, as training does).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:  # noqa: ANN001
        total = hidden.new_zeros(())
        blocks = []
        for start in range(0, hidden.shape[0], chunk):
            block = hidden[start : start + chunk] @ weight.T
            picked = block.gather(1, targets[start : start + chunk, None]).squeeze(1)
            peak = block.amax(-1, keepdim=True)
            block.sub_(peak).exp_()
            partition = block.sum(-1, keepdim=True)
            block.div_(partition)  # the chunk's softmax, kept for backward
            total += (peak.squeeze(1) + partition.squeeze(1).log() - picked).sum()
            blocks.append(block)
        ctx.save_for_backward(hidden, weight, targets, *blocks)
        ctx.chunk = chunk
        return total / hidden.shape[0]

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # noqa: ANN001
        hidden, weight, targets, *blocks = ctx.saved_tensors
        scale = grad_output / hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight)
        for index, probs in enumerate(blocks):
            start = index * ctx.chunk
            probs[torch.arange(probs.shape[0]), targets[start : start + ctx.chunk]] -= 1.0
            probs *= scale
            grad_hidden[start : start + ctx.chunk] = probs @ weight
            grad_weight.addmm_(probs.T, hidden[start : start + ctx.chunk])
        return grad_hidden, grad_weight, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 256
) -> torch.Tensor:
    """Mean next-token cross-entropy of a linear head without materialising all logits.

    Args:
        hidden: (N, d) final hidden states. weight: (V, d) output head. targets: (N,) token ids. chunk: rows per block.
    """
    return ChunkedCrossEntropy.apply(hidden, weight, targets, chunk)


class BatchSource(Protocol):
    """Training data: ``batch(spec, step)`` gives step ``step``'s (batch_size, context + 1) token windows, the same
    whenever it is asked (so that training resumes exactly); ``identity`` names the data in cache keys."""

    identity: str

    def batch(self, spec: SuiteSpec, step: int) -> torch.Tensor: ...


def batch_starts(spec: SuiteSpec, n_tokens: int, step: int) -> NDArray[np.int64]:
    """Start offsets of the sequences of one training step: the same for every model size.

    The training tokens are cut into non-overlapping windows of ``context + 1`` tokens, shuffled once per epoch
    by a generator seeded with (seed, epoch); step s takes the next ``batch_size`` windows.
    """
    windows = (n_tokens - 1) // (spec.context + 1)
    if windows < spec.batch_size:
        raise ConfigurationError(f"the training split has {n_tokens} tokens: too few for one batch of this suite")
    first = step * spec.batch_size
    epoch, offset = divmod(first, windows)
    order = np.random.default_rng([spec.seed, epoch]).permutation(windows)
    picked = order[offset : offset + spec.batch_size]
    if picked.size < spec.batch_size:  # the batch straddles two epochs
        following = np.random.default_rng([spec.seed, epoch + 1]).permutation(windows)
        picked = np.concatenate([picked, following[: spec.batch_size - picked.size]])
    return picked.astype(np.int64) * (spec.context + 1)


@dataclass
class CorpusBatches:
    """The training split of the offline corpus, encoded with the BPE of ``vocab_size`` (:func:`batch_starts`)."""

    vocab_size: int

    @property
    def identity(self) -> str:
        return corpus_data_id(self.vocab_size)

    def batch(self, spec: SuiteSpec, step: int) -> torch.Tensor:
        if not hasattr(self, "_tokens"):
            self._tokens = torch.from_numpy(np.array(token_ids("train", self.vocab_size), dtype=np.int64))
        starts = torch.from_numpy(batch_starts(spec, len(self._tokens), step))
        return self._tokens[starts[:, None] + torch.arange(spec.context + 1)]

    def __getstate__(self) -> dict:  # workers reload the memory-mapped tokens instead of receiving a copy
        return {"vocab_size": self.vocab_size}


def _save_resume_point(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
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
    """Restore the latest intact resume point; return its step (0 when there is none)."""
    points = sorted(p for p in folder.glob("resume-*") if not damaged_files(p))
    if not points:
        return 0
    latest = points[-1]
    device = next(model.parameters()).device
    model.load_state_dict(load_file(str(latest / "weights.safetensors"), device=str(device)))
    moments = load_file(str(latest / "optimizer.safetensors"), device=str(device))
    step = json.loads((latest / "state.json").read_text())["step"]
    for name, parameter in model.named_parameters():
        if f"{name}.exp_avg" in moments:
            optimizer.state[parameter] = {
                "step": torch.tensor(float(step)),  # AdamW keeps its step count on the CPU
                "exp_avg": moments[f"{name}.exp_avg"],
                "exp_avg_sq": moments[f"{name}.exp_avg_sq"],
            }
    return step


def model_status(spec: SuiteSpec, width: int, data: BatchSource) -> str:
    """``complete``, ``missing`` (never trained, or interrupted) or ``damaged: <what>`` (a checkpoint missing or
    failing its checksum) for one model of a suite."""
    folder = model_dir(spec, width, data.identity)
    if not (folder / "complete.json").is_file():
        return "missing"
    for step in spec.checkpoint_steps():
        bad = damaged_files(folder / f"step{step}")
        if bad:
            return f"damaged: step{step}/{bad[0]}"
    return "complete"


def train_model(
    spec: SuiteSpec,
    width: int,
    data: BatchSource,
    stop_after: int | None = None,
    threads: int = 1,
    device: str = "cpu",
) -> Path:
    """Train one model of a suite (or finish a killed run, or retrain a damaged one), saving every checkpoint.

    Args:
        spec: the suite. width: the model's hidden size. data: its training batches.
        stop_after: stop after this many steps (to simulate an interrupted run in tests).
        threads: torch threads while training (1 by default: the weights then do not depend on the machine).
        device: where the model trains (``cuda`` on a GPU machine; the bitwise resume holds on the CPU).

    Returns:
        The model's folder.
    """
    folder = model_dir(spec, width, data.identity)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if model_status(spec, width, data) == "complete":
            return folder
        (folder / "complete.json").unlink(missing_ok=True)  # damaged: retrain from the last intact resume point
        with open(folder / "trainers.log", "a") as log:  # one line per process that trained (tests read it)
            log.write(f"{os.getpid()}\n")
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            _train(spec, width, data, folder, stop_after, device)
        finally:
            torch.set_num_threads(previous_threads)
    return folder


def _train(
    spec: SuiteSpec, width: int, data: BatchSource, folder: Path, stop_after: int | None, device: str = "cpu"
) -> None:
    torch.manual_seed(spec.seed)
    model = GPTNeoXForCausalLM(model_config(spec, width)).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=spec.peak_lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=spec.weight_decay
    )
    step = _load_resume_point(folder, model, optimizer)
    checkpoints = set(spec.checkpoint_steps())
    bar = progress(total=spec.steps, initial=step, desc=f"{spec.name} d={width}", unit="step", leave=False)
    save_checkpoint = lambda tmp: model.save_pretrained(tmp, safe_serialization=True)  # noqa: E731
    if step == 0:
        write_directory_atomically(folder / "step0", save_checkpoint)
    model.train()
    started, first_step = time.perf_counter(), step
    while step < spec.steps and (stop_after is None or step < stop_after):
        windows = data.batch(spec, step).to(device)
        for group in optimizer.param_groups:
            group["lr"] = spec.learning_rate(step)
        hidden = model.gpt_neox(input_ids=windows[:, :-1]).last_hidden_state.reshape(-1, width)
        chunk = 256 if device == "cpu" else hidden.shape[0]  # a GPU holds every logit at once; launches cost more
        loss = chunked_cross_entropy(hidden, model.get_output_embeddings().weight, windows[:, 1:].reshape(-1), chunk)
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
            "data": data.identity,
            "trained_by_pid": os.getpid(),
            "seconds_this_run": round(seconds, 1),
            "tokens_per_second": round((step - first_step) * spec.tokens_per_step / max(seconds, 1e-9)),
            "commit": source_commit(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        }
        write_atomically(folder / "complete.json", json.dumps(record))  # first: a kill now loses nothing
        for point in folder.glob("resume-*"):
            shutil.rmtree(point)


def training_record(spec: SuiteSpec, width: int, data: BatchSource) -> dict:
    """The completion record of a trained model (time and speed of its last training session)."""
    return read_json(model_dir(spec, width, data.identity) / "complete.json")


def _train_in_worker(spec: SuiteSpec, width: int, data: BatchSource, device: str) -> Path:
    return train_model(spec, width, data, device=device)


def ensure_trained(
    runs: list[tuple[SuiteSpec, int, BatchSource]],
    jobs: int = 1,
    device: str = "cpu",
    pool: ProcessPoolExecutor | None = None,
    on_trained: Callable[[SuiteSpec, int], None] | None = None,
) -> list[str]:
    """Train every (suite, width, data) whose model is missing or damaged, ``jobs`` models at a time (one thread
    each, in worker processes, on ``device``); complete models are only checked. Returns each model's status before
    training.

    ``pool``: worker processes to train in instead of a new pool of ``jobs`` (so that other work queued in it shares
    the cores with the models). ``on_trained(spec, width)`` is called here as each model it trains is done (to
    queue work that needs that model)."""
    before = [model_status(spec, width, data) for spec, width, data in runs]
    todo = [run for run, status in zip(runs, before, strict=True) if status != "complete"]
    for (spec, width, _), status in zip(runs, before, strict=True):
        if status.startswith("damaged"):
            print(f"training: {spec.model_name(width)} is {status}: retraining it", flush=True)
    unique = list({(spec, width, data.identity): (spec, width, data) for spec, width, data in todo}.values())
    if unique:  # one line per model in logs, where progress bars are off
        print(f"training: {len(unique)} of {len(runs)} models, {min(jobs, len(unique))} at a time", flush=True)
    started = time.perf_counter()

    def done(index: int, run: tuple[SuiteSpec, int, BatchSource]) -> None:
        spec, width, _ = run
        print(f"training: {spec.model_name(width)} (seed {spec.seed}, {spec.steps} steps) done, {index} of "
              f"{len(unique)}, {time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        if on_trained is not None:
            on_trained(spec, width)

    if pool is None and (jobs <= 1 or len(unique) <= 1):
        for index, (spec, width, data) in enumerate(unique, 1):
            train_model(spec, width, data, device=device)
            done(index, (spec, width, data))
        return before
    executor = pool or worker_pool(jobs)
    waiting, running = list(unique), {}

    def queue_next() -> None:
        run = waiting.pop(0)
        running[executor.submit(_train_in_worker, *run, device)] = run

    try:
        # At most ``jobs`` models queued at once: work that on_trained queues goes before the models still waiting.
        for _ in range(min(jobs, len(waiting))):
            queue_next()
        index = 0
        while running:
            future = next(as_completed(running))
            future.result()
            index += 1
            done(index, running.pop(future))
            if waiting:
                queue_next()
    finally:
        if pool is None:
            executor.shutdown()
    return before


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` worker processes of one torch thread each (side by side, more threads would spin for the same
    cores), started fresh (spawn: no fork of a process that holds torch threads)."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_one_thread)


def _one_thread() -> None:
    torch.set_num_threads(1)


def suite_checkpoint(spec: SuiteSpec, width: int, data: BatchSource, step: int) -> Checkpoint:
    """The :class:`satlib.models.Checkpoint` of one trained model at ``step`` (a path only: nothing is trained)."""
    return trained_checkpoint(spec, width, data.identity, step)
