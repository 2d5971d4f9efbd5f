"""Tiny models built from configs (no download): random weights, a few thousand parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def tiny_llama(seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    return GPT2LMHeadModel(config).eval()


class Toy(nn.Module):
    """Embedding, Conv1d, Conv2d and Linear layers in one small network (with biases)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(20, 8, padding_idx=0)
        self.conv1 = nn.Conv1d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(1, 4, 3, padding=1)
        self.lin = nn.Linear(8 * 8, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)  # (B, T, 8)
        x = self.conv1(x.transpose(1, 2))  # (B, 8, T)
        x = self.conv2(x[:, None])  # (B, 4, 8, T)
        x = x.mean(dim=(1, 3))  # (B, 8)
        x = torch.cat([x] * 8, dim=-1)  # (B, 64)
        return self.head(torch.relu(self.lin(x)))  # (B, 5)


def randomize_lora_b(model: nn.Module, seed: int = 1) -> None:
    """Give every B (and embedding A) random values, so the adapter really changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_embedding_A" in name:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * 0.3)


def token_ids() -> torch.Tensor:
    """A fixed (2, 9) batch of token ids inside every tiny model's vocabulary."""
    return torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(3))


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


def cli_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Runs ``lorakit argv`` in-process and returns its one error line, checking exit code 2 and no traceback."""
    from lorakit.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lorakit: error: "), err
    return lines[0]
