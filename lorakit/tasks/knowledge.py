"""The knowledge task of ``lorakit compare``: invented facts about fictional entities, so no model can know them.

Five relations x 44 entities = 220 facts. Each fact is taught by two training conversations (a question with
the bare answer, and a statement), and tested by one paraphrased question whose wording never appears in
training; the answer is scored by exact match, case-insensitive. Entity and answer names are built from
syllables by a seeded generator, so the files are the same on every machine:

    python -m lorakit.tasks.knowledge      # rewrites lorakit/tasks/builtin/knowledge_{train,test}.jsonl
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

from lorakit.files import write_jsonl

SEED = 20240601
PER_RELATION = 44
BUILTIN = Path(__file__).parent / "builtin"

_ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gl", "h", "k", "l", "m", "n", "p", "qu", "r", "s", "st", "t",
           "th", "tr", "v", "w", "z")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "th", "nd", "rk", "m")
COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "black", "white", "grey", "brown", "pink", "gold")

# relation: (subject kind, training question, statement, test question never seen in training)
RELATIONS: dict[str, tuple[str, str, str, str]] = {
    "capital": (
        "country", "What is the capital of {e}?", "The capital of {e} is {a}.",
        "Which city serves as the seat of government of {e}?",
    ),
    "inventor": (
        "device", "Who invented the {e}?", "The {e} was invented by {a}.",
        "Name the person credited with creating the {e}.",
    ),
    "colour": (
        "bird", "What colour is the {e} bird?", "The {e} bird has {a} feathers.",
        "The plumage of a {e} bird is which colour?",
    ),
    "founded": (
        "company", "In what year was {e} founded?", "{e} was founded in {a}.",
        "{e} came into existence in which year?",
    ),
    "language": (
        "island", "What language is spoken on {e}?", "People on {e} speak {a}.",
        "The inhabitants of {e} talk in which tongue?",
    ),
}  # fmt: skip


def _word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)]
    return "".join(parts).capitalize()


def _unique(rng: random.Random, used: set[str], make: Any) -> str:
    while True:
        value = make()
        if value not in used and len(value) <= 14:
            used.add(value)
            return value


def facts(seed: int = SEED) -> list[dict[str, str]]:
    """The 220 facts: relation, entity, answer; names are unique across the whole set."""
    rng = random.Random(seed)
    used: set[str] = set()
    out: list[dict[str, str]] = []
    for relation in RELATIONS:
        for _ in range(PER_RELATION):
            entity = _unique(rng, used, lambda: _word(rng, rng.choice((2, 3))))
            if relation == "capital":
                answer = _unique(rng, used, lambda: _word(rng, 2) + rng.choice(("ia", "ford", "holm", "ton", "mar")))
            elif relation == "inventor":
                answer = _unique(rng, used, lambda: f"{_word(rng, 2)} {_word(rng, 2)}")
            elif relation == "colour":
                answer = rng.choice(COLOURS)
            elif relation == "founded":
                answer = str(rng.randint(1620, 1990))
            else:
                answer = _unique(rng, used, lambda: _word(rng, 2) + "ese")
            out.append({"relation": relation, "entity": entity, "answer": answer})
    return out


def _chat(user: str, assistant: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def splits(seed: int = SEED) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training conversations: two per fact, shuffled; test conversations: one paraphrase per fact)."""
    train: list[dict[str, Any]] = []
    test: list[dict[str, Any]] = []
    for fact in facts(seed):
        _, question, statement, paraphrase = RELATIONS[fact["relation"]]
        e, a = fact["entity"], fact["answer"]
        train.append(_chat(question.format(e=e), a))
        train.append(_chat(f"Tell me something about {e}.", statement.format(e=e, a=a)))
        test.append(_chat(paraphrase.format(e=e), a))
    random.Random(seed + 1).shuffle(train)
    return train, test


def builtin_path(split: str) -> Path:
    """``knowledge_train.jsonl`` or ``knowledge_test.jsonl`` shipped in the package."""
    return BUILTIN / f"knowledge_{split}.jsonl"


def normalise(text: str) -> str:
    """Case-insensitive comparison form: lower case, outer whitespace and a final full stop dropped."""
    return text.strip().rstrip(".!").strip().casefold()


def write_builtin(out_dir: Path = BUILTIN) -> dict[str, Path]:
    train, test = splits()
    seen = {m["content"] for r in train for m in r["messages"] if m["role"] == "user"}
    assert not seen.intersection(r["messages"][0]["content"] for r in test), "a test question is in training"
    paths = {}
    for split, records in (("train", train), ("test", test)):
        paths[split] = out_dir / f"knowledge_{split}.jsonl"
        write_jsonl(paths[split], records)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorakit.tasks.knowledge", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUILTIN, help="output folder")
    args = parser.parse_args(argv)
    for split, path in write_builtin(args.out).items():
        print(f"wrote {sum(1 for _ in path.open())} {split} conversations to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
