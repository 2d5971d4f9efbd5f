"""Train a LoRA adapter from Python on a model loaded with plain transformers (README "The library").

    python examples/train_in_python.py --steps 100 --output my-adapter

The model here is the built-in SmolLM2-135M-Instruct's local folder, so it runs without network; any causal LM
folder or hub id you can load with transformers works the same. The data is the built-in contacts training split:
a JSONL file of chat records (a list of such records works too).
"""

from __future__ import annotations

import argparse

from transformers import AutoModelForCausalLM, AutoTokenizer

import lorakit
from lorakit.models import builtin_model_dir
from lorakit.tasks.contacts import builtin_path


def main(argv: list[str] | None = None) -> lorakit.TrainResult:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(builtin_model_dir()), help="a transformers folder or hub id")
    parser.add_argument("--data", default=str(builtin_path("train")), help="a JSONL file of chat records")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--output", default="my-adapter")
    args = parser.parse_args(argv)

    model = AutoModelForCausalLM.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    trainer = lorakit.Trainer(model, tokenizer, lorakit.TrainConfig(r=16, lora_alpha=32, max_steps=args.steps))
    result = trainer.fit(args.data)
    lorakit.save_adapter(trainer.model, args.output)
    print(
        f"{result.steps} steps, final loss {result.final_loss:.4f}, {result.tokens:,} tokens in {result.seconds:.0f} s"
    )
    print(f"adapter in {args.output}/ (peft's format)")
    return result


if __name__ == "__main__":
    main()
