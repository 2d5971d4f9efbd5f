"""Largest logit difference between lorakit and the real peft package on the built-in model, per method and
direction (files written by one, loaded by the other).

    .venv/bin/python -m bench.methods_parity

Adapters get random non-trivial weights (as if trained) so each one really changes the output; the table also
shows by how much (|adapted - base|), for scale. Writes bench/results/methods_parity.json. Needs peft.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
from pathlib import Path

import peft
import torch
from torch import nn

import lorakit

RESULTS = Path(__file__).resolve().parent / "results" / "methods_parity.json"
TARGETS = ["q_proj", "v_proj", "down_proj"]


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _perturb(model: nn.Module, seed: int = 1) -> None:
    """Stand-in for training: B (and DoRA's magnitude, IA3's vectors) moved away from their no-op init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
            elif "lora_magnitude_vector" in name or "ia3_l" in name:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=gen))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=0, help="keep only the first N decoder layers (0 = all 30)")
    args = parser.parse_args()
    torch.manual_seed(0)
    base, tokenizer = lorakit.load_model()
    if args.layers:  # the real weights of the first layers: same maths per layer, a shorter run on a busy CPU
        base.model.layers = base.model.layers[: args.layers]
        base.config.num_hidden_layers = args.layers
    ids = tokenizer("Name: Ada Lovelace, phone +44 20 7946 0958, email ada@example.org.", return_tensors="pt").input_ids
    plain = _logits(base, ids)
    rows: list[list[object]] = []
    tmp = Path(tempfile.mkdtemp())

    def both_ways(label: str, ours_cfg: object, theirs_cfg: peft.PeftConfig) -> None:
        ours = lorakit.add_adapter(copy.deepcopy(base), ours_cfg)  # type: ignore[arg-type]
        _perturb(ours)
        lorakit.save_adapter(ours, tmp / label / "ours")
        theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp / label / "ours")
        a, b = _logits(ours, ids), _logits(theirs, ids)
        rows.append([label, "lorakit -> peft", f"{(a - b).abs().max().item():.2e}", f"{(a - plain).abs().max():.2f}"])
        del ours, theirs
        theirs = peft.get_peft_model(copy.deepcopy(base), theirs_cfg)
        _perturb(theirs, seed=2)
        theirs.save_pretrained(tmp / label / "theirs")
        ours = lorakit.load_adapter(copy.deepcopy(base), tmp / label / "theirs")
        a, b = _logits(ours, ids), _logits(theirs, ids)
        rows.append([label, "peft -> lorakit", f"{(a - b).abs().max().item():.2e}", f"{(a - plain).abs().max():.2f}"])

    kw = {"r": 8, "lora_alpha": 16, "target_modules": TARGETS}
    both_ways("DoRA", lorakit.LoraConfig(**kw, use_dora=True), peft.LoraConfig(**kw, use_dora=True))
    both_ways("rsLoRA", lorakit.LoraConfig(**kw, use_rslora=True), peft.LoraConfig(**kw, use_rslora=True))
    both_ways("IA3", lorakit.IA3Config(), peft.IA3Config())

    # PiSSA converted to plain LoRA (rank 2r) on the unmodified base.
    for init in ("pissa", "olora"):
        ours = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(**kw, init_lora_weights=init))
        lorakit.save_adapter(ours, tmp / init / "init")
        _perturb(ours)
        lorakit.save_adapter(ours, tmp / init / "lora", initial_adapter=tmp / init / "init")
        theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp / init / "lora")
        a, b = _logits(ours, ids), _logits(theirs, ids)
        rows.append([f"{init} converted", "lorakit -> peft", f"{(a - b).abs().max().item():.2e}",
                     f"{(a - plain).abs().max():.2f}"])  # fmt: skip
        del ours, theirs

    # combine_adapters vs add_weighted_adapter on two peft-made adapters.
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kw), "one")
    theirs.add_adapter("two", peft.LoraConfig(r=8, lora_alpha=8, target_modules=["v_proj", "o_proj"]))
    _perturb(theirs)
    theirs.save_pretrained(tmp / "mix")
    ours = lorakit.load_adapter(copy.deepcopy(base), tmp / "mix", "one")
    lorakit.load_adapter(ours, tmp / "mix" / "two", "two")
    for method in ("cat", "linear", "svd"):
        theirs.add_weighted_adapter(["one", "two"], [0.6, 0.9], f"m_{method}", combination_type=method)
        theirs.set_adapter(f"m_{method}")
        lorakit.combine_adapters(ours, ["one", "two"], [0.6, 0.9], f"m_{method}", method)  # type: ignore[arg-type]
        a, b = _logits(ours, ids), _logits(theirs, ids)
        rows.append([f"combine {method}", "vs peft add_weighted_adapter", f"{(a - b).abs().max().item():.2e}",
                     f"{(a - plain).abs().max():.2f}"])  # fmt: skip

    columns = ["method", "direction", "max |logit diff|", "max |adapted - base|"]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(map(str, row)))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "name": "methods_parity",
        "title": "lorakit vs peft: largest logit difference on SmolLM2-135M (fp32)",
        "command": "python -m bench.methods_parity" + (f" --layers {args.layers}" if args.layers else ""),
        "machine": f"{platform.machine()}, torch {torch.__version__}, peft {peft.__version__}",
        "columns": columns,
        "rows": rows,
        "notes": f"{len(base.model.layers)} decoder layers; one prompt of {ids.shape[1]} tokens; adapters on "
        f"{', '.join(TARGETS)} (IA3: peft's defaults) "
        "with random non-trivial weights; the last column shows how much the adapter changes the logits.",
    }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
