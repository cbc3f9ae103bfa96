"""Shared fixtures. The whole test session runs offline: sockets to non-loopback addresses are blocked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from satlib.network import HF_OFFLINE_VARIABLES, block_network

ROOT = Path(__file__).resolve().parents[1]

os.environ.update(HF_OFFLINE_VARIABLES)
block_network(True)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def write_pythia_mirror(folder: Path, checkpoints: list[tuple[str, int]], documents: int) -> Path:
    """A local copy laid out like the hub (``<folder>/EleutherAI/<model>/step<N>/``): small random GPT-NeoX models
    with the corpus's 4,096-token BPE (seeded by step), and a Pile stand-in of ``documents`` test documents as
    JSON Lines. Returns the JSON Lines file."""
    import json

    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from satlib import corpus, tokenization

    tokenizer = tokenization.load_tokenizer(4096)
    for name, step in checkpoints:
        torch.manual_seed(step)
        config = GPTNeoXConfig(vocab_size=4096, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64, tie_word_embeddings=False)  # fmt: skip
        checkpoint = folder / "EleutherAI" / name / f"step{step}"
        GPTNeoXForCausalLM(config).save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)
    pile = folder / "pile.jsonl"
    pile.write_text("".join(json.dumps({"text": d.text}) + "\n" for d in corpus.documents("test")[:documents]))
    return pile
