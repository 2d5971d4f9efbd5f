from __future__ import annotations

from typing import Any

import pytest

from lorakit.data.tokenize import (
    IGNORE_INDEX,
    TokenizedExample,
    TokenizeStats,
    render_prompt,
    tokenize_dataset,
    tokenize_example,
)
from lorakit.errors import DataError, LorakitError

IM_END = 2  # <|im_end|>: SmolLM2's eos and end-of-turn token

SYSTEM = {"role": "system", "content": "You answer in one word."}
USER = {"role": "user", "content": "What colour is the sky?"}
ASSISTANT = {"role": "assistant", "content": "Blue."}


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def labelled_spans(example: TokenizedExample) -> list[list[int]]:
    """Maximal runs of labelled positions, as token ids."""
    spans: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token, "a label must be the token at its own position (the model shifts)"
            if previous == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(token)
        previous = label
    return spans


def chat(tokenizer: Any, messages: list[dict], seq_len: int = 4096) -> TokenizedExample:
    example, truncated = tokenize_example(tokenizer, {"messages": messages}, seq_len)
    assert example is not None and not truncated
    assert len(example.input_ids) == len(example.labels)
    # The pieces are tokenized separately; together they must equal tokenizing the whole rendering.
    assert example.input_ids == encode(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False))
    return example


def test_system_user_assistant_token_by_token(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    messages = [SYSTEM, USER, ASSISTANT]
    example = chat(tok, messages)
    prompt = render_prompt(tok, messages[:-1])
    answer = encode(tok, "Blue.")
    # Layout: prompt (up to "<|im_start|>assistant\n"), answer, <|im_end|>, "\n".
    assert example.input_ids == prompt + answer + [IM_END] + encode(tok, "\n")
    expected_labels = [IGNORE_INDEX] * len(prompt) + answer + [IM_END] + [IGNORE_INDEX]
    for position, (label, want) in enumerate(zip(example.labels, expected_labels, strict=True)):
        assert label == want, f"position {position} ({tok.decode([example.input_ids[position]])!r})"
    (span,) = labelled_spans(example)
    assert tok.decode(span) == ASSISTANT["content"] + "<|im_end|>"
    assert example.n_label_tokens == len(answer) + 1


def test_multi_turn_labels_every_assistant_turn_and_no_user_turn(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    messages = [
        SYSTEM,
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?\nBe brief."},
        {"role": "assistant", "content": "Rome.\n\nIt is also the largest city."},
    ]
    example = chat(tok, messages)
    spans = [tok.decode(span) for span in labelled_spans(example)]
    assert spans == ["Paris.<|im_end|>", "Rome.\n\nIt is also the largest city.<|im_end|>"]
    # The second reply is trained in the context of the whole earlier conversation.
    second_prompt = render_prompt(tok, messages[:3] + messages[3:4])
    assert example.input_ids[: len(second_prompt)] == second_prompt


def test_without_system_message_keeps_the_default_system_prompt_unlabelled(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    messages = [USER, ASSISTANT]
    example = chat(tok, messages)
    text = tok.decode(example.input_ids)
    assert text.startswith("<|im_start|>system\n")  # the template inserts its default system message
    assert example.input_ids[: len(render_prompt(tok, [USER]))] == render_prompt(tok, [USER])
    assert [tok.decode(span) for span in labelled_spans(example)] == ["Blue.<|im_end|>"]


@pytest.mark.parametrize("content", ["", " leading space", "\nleading newline", "trailing\n", "日本語 ✓", "a\tb"])
def test_unusual_assistant_content(smollm2_tokenizer: Any, content: str) -> None:
    example = chat(smollm2_tokenizer, [USER, {"role": "assistant", "content": content}])
    assert [smollm2_tokenizer.decode(span) for span in labelled_spans(example)] == [content + "<|im_end|>"]


def test_render_prompt_ends_with_the_generation_prompt(smollm2_tokenizer: Any) -> None:
    ids = render_prompt(smollm2_tokenizer, [SYSTEM, USER])
    assert smollm2_tokenizer.decode(ids).endswith(
        "<|im_start|>user\nWhat colour is the sky?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_prompt_completion(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    example, truncated = tokenize_example(tok, {"prompt": "2 + 2 =", "completion": " 4"}, 64)
    assert example is not None and not truncated
    prompt, completion = encode(tok, "2 + 2 ="), encode(tok, " 4")
    # SmolLM2 is not configured to add a bos token, so none is added.
    assert example.input_ids == prompt + completion + [IM_END]
    assert example.labels == [IGNORE_INDEX] * len(prompt) + completion + [IM_END]


def test_truncation_keeps_the_start_and_reports_it(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    record = {"messages": [USER, {"role": "assistant", "content": "one two three four five six"}]}
    full, _ = tokenize_example(tok, record, 4096)
    assert full is not None
    first_label = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)

    cut, truncated = tokenize_example(tok, record, first_label + 2)
    assert truncated and cut is not None
    assert cut.input_ids == full.input_ids[: first_label + 2]
    assert cut.labels == full.labels[: first_label + 2]
    assert cut.n_label_tokens == 2

    skipped, truncated = tokenize_example(tok, record, first_label)
    assert skipped is None and truncated

    exact, truncated = tokenize_example(tok, record, len(full.input_ids))
    assert exact == full and not truncated


def test_dataset_stats_account_for_truncation_and_skipping(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    short = {"prompt": "Hi", "completion": " there"}  # 3 tokens, 2 labelled
    prompt_heavy = {"prompt": "word " * 40, "completion": " end"}  # the answer is past the cut: skipped
    answer_heavy = {"prompt": "Hi", "completion": " word" * 40}  # cut inside the answer: truncated
    records = [short, prompt_heavy, answer_heavy, short]
    examples, stats = tokenize_dataset(tok, records, seq_len=10)
    assert len(examples) == 3
    assert all(len(example.input_ids) <= 10 for example in examples)
    assert stats == TokenizeStats(
        n_records=4,
        n_truncated=1,
        n_skipped=1,
        n_tokens=sum(len(example.input_ids) for example in examples),
        n_label_tokens=sum(example.n_label_tokens for example in examples),
    )
    assert stats.n_tokens == 3 + 10 + 3 and stats.n_label_tokens == 2 + 9 + 2


def test_all_examples_too_long_raises_with_the_longest_length(smollm2_tokenizer: Any) -> None:
    records = [{"prompt": "word " * 30, "completion": " end"}, {"prompt": "word " * 20, "completion": " x"}]
    full = [tokenize_example(smollm2_tokenizer, record, 10_000)[0] for record in records]
    longest = max(len(example.input_ids) for example in full if example is not None)
    with pytest.raises(LorakitError, match=rf"all 2 examples are longer than --seq-len 8.*--seq-len {longest}"):
        tokenize_dataset(smollm2_tokenizer, records, seq_len=8)
    with pytest.raises(DataError, match=r"^train\.jsonl: all 2 examples"):
        tokenize_dataset(smollm2_tokenizer, records, seq_len=8, path="train.jsonl")


def test_assistant_first_conversation_is_a_clear_error(smollm2_tokenizer: Any) -> None:
    records = [{"prompt": "a", "completion": "b"}, {"messages": [ASSISTANT, USER, ASSISTANT]}]
    with pytest.raises(DataError, match=r"^d\.jsonl: record 2: the conversation starts with an assistant"):
        tokenize_dataset(smollm2_tokenizer, records, seq_len=64, path="d.jsonl")


class OtherTemplate:
    """The real tokenizer with a different chat template, to exercise template-independent logic."""

    def __init__(self, tokenizer: Any, template: str) -> None:
        self._tokenizer = tokenizer
        self.chat_template = template

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)

    def apply_chat_template(self, messages: list[dict], **kwargs: Any) -> Any:
        return self._tokenizer.apply_chat_template(messages, chat_template=self.chat_template, **kwargs)


# A Llama-2-like layout: no newline after the end-of-turn token, a space before it, stripped content.
SPACED_EOS = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] | trim }} <|im_end|>"
    "{% else %}[{{ m['role'] }}] {{ m['content'] }} [/{{ m['role'] }}]{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{% endif %}"
)


def test_end_of_turn_is_found_from_the_template(smollm2_tokenizer: Any) -> None:
    tok = OtherTemplate(smollm2_tokenizer, SPACED_EOS)
    messages = [USER, {"role": "assistant", "content": "  Blue.  "}, USER, ASSISTANT]
    example, _ = tokenize_example(tok, {"messages": messages}, 4096)
    assert example is not None
    spans = [smollm2_tokenizer.decode(span) for span in labelled_spans(example)]
    assert spans == ["Blue. <|im_end|>", "Blue. <|im_end|>"]


def test_template_without_end_of_turn_token_is_rejected(smollm2_tokenizer: Any) -> None:
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tok = OtherTemplate(smollm2_tokenizer, template)
    with pytest.raises(LorakitError, match="no end-of-turn/eos token"):
        tokenize_example(tok, {"messages": [USER, ASSISTANT]}, 4096)


def test_template_rendering_the_last_turn_differently_is_rejected(smollm2_tokenizer: Any) -> None:
    # Like templates that drop earlier turns' reasoning: a prefix no longer matches the full rendering.
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if not loop.last %} (earlier){% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = OtherTemplate(smollm2_tokenizer, template)
    with pytest.raises(LorakitError, match="does not render prefixes of the conversation consistently"):
        tokenize_example(tok, {"messages": [USER, ASSISTANT, USER, ASSISTANT]}, 4096)


def test_missing_chat_template_is_a_clear_error(smollm2_tokenizer: Any) -> None:
    tok = OtherTemplate(smollm2_tokenizer, "")
    tok.chat_template = None  # type: ignore[assignment]
    with pytest.raises(LorakitError, match="no chat template"):
        tokenize_example(tok, {"messages": [USER, ASSISTANT]}, 4096)
