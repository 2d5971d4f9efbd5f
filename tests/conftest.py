from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2():
    """The built-in SmolLM2-135M-Instruct (model, tokenizer), loaded once; tests must not modify it."""
    import lorakit

    return lorakit.load_model()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2):
    """The built-in model's real tokenizer (ChatML template, eos/pad = <|im_end|>)."""
    return smollm2[1]
