"""Ollama ``Modelfile``s for exported GGUF files: ``FROM`` the base + ``ADAPTER``, or ``FROM`` a merged file.

Ollama's ``TEMPLATE`` is a Go template, not the Jinja chat template a tokenizer carries, so it cannot be copied.
For ChatML (the built-in model's format: ``<|im_start|>role\\ncontent<|im_end|>\\n``) lorakit writes the Go
template, the stop tokens, and the template's default system prompt as ``SYSTEM`` (Ollama puts it first when a
conversation has none, as the Jinja template does). For other formats it writes no ``TEMPLATE``: Ollama then
takes the chat template from the GGUF file itself, as it does for any GGUF it imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.files import write_text_atomic

CHATML_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


@dataclass(frozen=True)
class ChatFormat:
    """A model's chat template (Jinja, as tokenizers carry it) and its end-of-turn token."""

    template: str | None
    eos: str | None

    @classmethod
    def from_gguf(cls, path: Path) -> ChatFormat:
        import gguf

        reader = gguf.GGUFReader(path)
        fields = reader.fields
        template = fields["tokenizer.chat_template"].contents() if "tokenizer.chat_template" in fields else None
        eos = None
        if "tokenizer.ggml.eos_token_id" in fields and "tokenizer.ggml.tokens" in fields:
            eos_id = int(fields["tokenizer.ggml.eos_token_id"].contents())
            eos = str(fields["tokenizer.ggml.tokens"].contents(eos_id))
        return cls(template, eos)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ChatFormat:
        template = getattr(tokenizer, "chat_template", None)
        return cls(template if isinstance(template, str) else None, getattr(tokenizer, "eos_token", None))

    @property
    def is_chatml(self) -> bool:
        return self.template is not None and "<|im_start|>" in self.template and "<|im_end|>" in self.template

    def default_system(self) -> str | None:
        """The system prompt the template inserts when a conversation has none (SmolLM2's has one), or None."""
        if not self.is_chatml:
            return None
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        assert self.template is not None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        rendered = env.from_string(self.template).render(
            messages=[{"role": "user", "content": "\x00"}], add_generation_prompt=False, eos_token=self.eos
        )
        head = "<|im_start|>system\n"
        if not rendered.startswith(head) or "<|im_end|>" not in rendered:
            return None
        return rendered[len(head) : rendered.index("<|im_end|>")]


def modelfile_text(base: str, adapter: str | None, chat: ChatFormat) -> str:
    lines = [
        "# Ollama: ollama create NAME -f THIS_FILE && ollama run NAME",
        f"FROM {base}",
    ]
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    if chat.is_chatml:
        lines.append(f'TEMPLATE """{CHATML_TEMPLATE}"""')
        system = chat.default_system()
        if system:
            lines.append(f'SYSTEM """{system}"""')
        stops = ["<|im_start|>", "<|im_end|>"]
    else:
        lines.append("# no TEMPLATE: Ollama reads the chat template from the GGUF file")
        stops = [chat.eos] if chat.eos else []
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_file: Path, base: str, adapter: str | None, chat: ChatFormat) -> Path:
    """``<gguf_file stem>.Modelfile`` beside the export (one per export, so several can share a folder)."""
    path = Path(gguf_file).with_suffix(".Modelfile")
    write_text_atomic(path, modelfile_text(base, adapter, chat))
    return path
