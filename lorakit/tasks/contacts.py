"""The built-in "contacts" task: a seeded generator of extraction examples and a loader for the shipped files.

The demo teaches a small instruct model to pull name, email, phone, company and city out of free text and
reply with only JSON. What must generalise is the extraction, not the wording, so the generator mixes many
styles (signatures, CRM lines, voicemails, forms...) and keeps some styles and pool entries for the eval split
alone. A detail counts as given only when its value was really rendered into the message (tracked with
markers until the end), so a template that leaves a detail out can never produce a wrong label.

Template mini-language (tiny, so that 35 styles fit in one readable module):
``{key}`` a contact detail (or ``first``, the contact's first name) or an extra such as ``{date}``;
``{a|b|c}`` a random choice of literal texts (``{{other}|team}`` to choose a value; an option naming a
detail that is not given is skipped);
``[...]`` optional: kept iff the details it names are given, or at random when it names none (distractors);
``<<head||seg||seg>>`` joins the segments whose details are given, head = ``sep``, ``pre^sep`` or
``pre^sep^post``, prefixed by flags: ``!`` at least one segment is required, ``~`` shuffle the segments.
A detail written outside ``[...]`` and ``<<...>>`` is required: the style is skipped for contacts without it.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lorakit.errors import DataError
from lorakit.files import write_jsonl
from lorakit.tasks.contacts_spec import POOL_SPEC, STYLE_SPEC

SYSTEM_PROMPT = (
    "Extract the contact details from the user's message. Reply with only a JSON object with the keys "
    "name, email, phone, company, city; use null for any detail that is not given."
)
KEYS: tuple[str, ...] = ("name", "email", "phone", "company", "city")
TRAINING: dict[str, Any] = {"max_steps": 240, "lr": 1e-3, "seq_len": 384}
"""``lorakit train``'s settings on this task (no --data), where TrainConfig's defaults are for a user's data: 240
steps (1.9 epochs of the 1000 examples) at lr 1e-3, tuned on the held-out split (docs/data.md); 384 tokens hold the
longest example. Flags still override them."""
Split = Literal["train", "eval"]
DEFAULT_SEEDS: dict[str, int] = {"train": 20240611, "eval": 77031}
DEFAULT_SIZES: dict[str, int] = {"train": 1000, "eval": 200}
EVAL_ONLY_SHARE = 0.4  # chance that an eval example takes its style / a pool entry from the eval-only sets
MAX_USER_CHARS = 480  # with system prompt, reply and ChatML tags this keeps examples under ~900 chars
PRESENCE: dict[str, float] = {"name": 0.76, "email": 0.78, "phone": 0.76, "company": 0.78, "city": 0.74}
_TRACKED = (*KEYS, "first")


def _parse_pools(spec: str) -> dict[str, tuple[str, ...]]:
    """Reads the pool sheet; entries end at a comma and a space, so "€1,240.00" stays whole."""
    lines: dict[str, str] = {}
    key = ""
    for line in spec.strip().split("\n"):
        if line.startswith("  "):
            lines[key] += " " + line.strip()
        else:
            key, _, rest = line.partition(": ")
            lines[key] = rest
    return {k: tuple(re.split(r",\s+", v.strip())) for k, v in lines.items()}


POOLS: dict[str, tuple[str, ...]] = _parse_pools(POOL_SPEC)  # "key" and "key/eval" entries
# The country domain that a legal form suggests (other companies get a generic one).
_TLD = {form: tld for form, _, tld in (entry.partition("=") for entry in POOLS["tld_by_form"])}


@dataclass(frozen=True)
class Template:
    """One message style; eval_only styles never appear in training, to measure generalisation."""

    name: str
    eval_only: bool
    variants: tuple[str, ...]


def _parse_styles(spec: str) -> tuple[Template, ...]:
    """Reads the style sheet above: written as text so that wording, not Python syntax, fills the lines."""
    styles: list[tuple[str, bool, list[str]]] = []
    for line in spec.strip("\n").split("\n"):
        if line.startswith("= "):
            name, *flag = line[2:].split()
            styles.append((name, flag == ["eval-only"], []))
        elif line.startswith("- "):
            styles[-1][2].append(line[2:])
        else:
            styles[-1][2][-1] += line[2:]
    return tuple(Template(n, e, tuple(v.replace("\\n", "\n") for v in vs)) for n, e, vs in styles)


TEMPLATES = _parse_styles(STYLE_SPEC)
_SHARED_STYLES = tuple(t for t in TEMPLATES if not t.eval_only)
_EVAL_STYLES = tuple(t for t in TEMPLATES if t.eval_only)
EVAL_ONLY_TEMPLATES: frozenset[str] = frozenset(t.name for t in _EVAL_STYLES)
EVAL_ONLY_POOLS: dict[str, tuple[str, ...]] = {  # pool entries that train never sees
    k: POOLS[f"{k}/eval"] for k in ("first", "last", "company", "city", "phone")
}

_MARK = re.compile("\x01(\\w+)\x02")
_REF = re.compile(r"\{(\w+)\}")
_GROUP = re.compile(r"<<(.*?)>>", re.S)
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")
_ANY_CITY, _ANY_COMPANY = (
    re.compile(r"\b(?:" + "|".join(map(re.escape, POOLS[pool] + POOLS[f"{pool}/eval"])) + r")\b")
    for pool in ("city", "company")
)
_FOLD = str.maketrans({"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "æ": "ae", "ß": "ss", "đ": "d", "ı": "i"})


class _Fail(Exception):
    """This style cannot express this contact (a required detail is not given): try another."""


class _Renderer:
    """Expands one template variant; details become markers so that what was really shown can be read back."""

    def __init__(self, rng: random.Random, values: dict[str, str | None], extras: dict[str, str]) -> None:
        self.rng, self.values, self.extras = rng, values, extras

    def given(self, text: str) -> bool:
        return all(self.values[k] is not None for k in _REF.findall(text) if k in _TRACKED)

    def expand(self, text: str) -> str:
        out: list[str] = []
        i = 0
        while i < len(text):
            if text[i] != "{":
                out.append(text[i])
                i += 1
                continue
            depth, j, cuts = 1, i + 1, [i]
            while depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if text[j] == "|" and depth == 1:
                    cuts.append(j)
                j += 1
            cuts.append(j - 1)
            out.append(self._pick([text[a + 1 : b] for a, b in itertools.pairwise(cuts)]))
            i = j
        return "".join(out)

    def _pick(self, options: list[str]) -> str:
        if len(options) == 1 and re.fullmatch(r"\w+", options[0]):
            key = options[0]
            if key not in _TRACKED:
                return self.extras[key]
            if self.values[key] is None:
                raise _Fail
            return f"\x01{key}\x02"
        usable = [o for o in options if self.given(o)]
        if not usable:
            raise _Fail
        return self.expand(self.rng.choice(usable))

    def group(self, match: re.Match[str]) -> str:
        head, *segments = match.group(1).split("||")
        flags = head[: len(head) - len(head.lstrip("!~"))]
        parts = head[len(flags) :].split("^")
        pre, sep, post = ("", parts[0], "") if len(parts) == 1 else (parts[0], parts[1], "^".join(parts[2:]))
        shown: list[str] = []
        for segment in segments:
            if self.given(segment):
                with contextlib.suppress(_Fail):
                    shown.append(self.expand(segment))
        if "~" in flags:
            self.rng.shuffle(shown)
        if not shown:
            if "!" in flags:
                raise _Fail
            return ""
        return self.expand(pre) + self.expand(sep).join(shown) + self.expand(post)

    def optional(self, match: re.Match[str]) -> str:
        inner = match.group(1)
        names_detail = any(k in _TRACKED for k in _REF.findall(inner))
        if not (self.given(inner) if names_detail else self.rng.random() < 0.5):
            return ""
        try:
            return self.expand(inner)
        except _Fail:
            return ""

    def render(self, variant: str) -> str:
        text = _OPTIONAL.sub(self.optional, _GROUP.sub(self.group, variant))
        return self.expand(text)


def _tidy(text: str) -> str:
    """Repairs the spacing that dropped optional parts leave behind (markers keep the values untouched)."""
    text = "\n".join(re.sub(r"(?<=\S) {2,}", " ", line).rstrip() for line in text.split("\n"))
    text = re.sub(r" +([,.])", r"\1", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text.translate(_FOLD)).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", folded.lower())


def _draw(rng: random.Random, pool: str, split: Split) -> str:
    """Eval draws from the pool's eval-only entries part of the time; train never sees them."""
    held_out = split == "eval" and rng.random() < EVAL_ONLY_SHARE
    return rng.choice(POOLS[f"{pool}/eval"] if held_out else POOLS[pool])


def _email(rng: random.Random, first: str, last: str, domain: str, split: Split) -> str:
    f, ln = _slug(first), _slug(last)
    pieces = {"f": f, "l": ln, "i": f[0], "j": ln[0]}
    pattern = _draw(rng, "local", split)
    local = "".join(pieces.get(c) or (str(rng.randrange(10)) if c == "#" else c) for c in pattern)
    if rng.random() < 0.05:
        local = ".".join(part.capitalize() for part in local.split("."))
    if rng.random() < 0.1 and "." in domain:
        domain = rng.choice(("eu.", "mail.", "uk.", "corp.")) + domain
    return f"{local}@{domain}"


def _phone(rng: random.Random, pattern: str) -> str:
    if rng.random() < 0.1:
        pattern += " " + rng.choice(POOLS["extension"])
    digit = {"#": lambda: str(rng.randrange(10)), "N": lambda: str(rng.randint(2, 9))}
    return "".join(digit[c]() if c in digit else c for c in pattern)


_EXTRA_POOLS = ("title", "event", "topic", "date", "time", "order", "amount", "aside")


def _contact(rng: random.Random, split: Split) -> tuple[dict[str, str], dict[str, str]]:
    """Samples every detail (the presence mask is applied later) plus the distractor extras."""
    first, last = _draw(rng, "first", split), _draw(rng, "last", split)
    style, second = rng.random(), _draw(rng, "last", split)
    if style < 0.05:
        name = f"{first} {rng.choice('ABCDEJKLMRST')}. {last}"
    elif style < 0.09 and " " not in last + second and second != last:
        name = f"{first} {last}-{second}"
    else:
        name = f"{first} {last}"
    base = _draw(rng, "company", split)
    suffix = _draw(rng, "suffix", split) if rng.random() < 0.45 else ""
    suffix = "" if "&" in base and "&" in suffix else suffix  # no "Quill & Ink & Co"
    words = [w for w in map(_slug, base.split()) if w]
    stem = rng.choice(("".join(words), words[0], "-".join(words)))
    domain = stem + (_TLD.get(suffix) or rng.choice(POOLS["tld"]))
    mail_domain = domain if rng.random() < 0.65 else _draw(rng, "freemail", split)
    values = {
        "name": name,
        "email": _email(rng, first, last, mail_domain, split),
        "phone": _phone(rng, _draw(rng, "phone", split)),
        "company": f"{base} {suffix}" if suffix else base,
        "city": _draw(rng, "city", split),
        "first": first,
    }
    me, other = rng.sample([n for n in POOLS["first"] if n != first], 2)
    url = rng.choice(("www.", "https://", "https://www.")) + domain + rng.choice(("", "/contact", "/about"))
    extras = {
        **{k: rng.choice(POOLS[k]) for k in _EXTRA_POOLS},
        "me": me, "other": other, "url": url, "dur": f"0:{rng.randint(8, 59):02d}",
    }  # fmt: skip
    return values, extras


def _leaks(user: str, values: dict[str, str], shown: set[str]) -> bool:
    """True when a detail labelled null still shows up (e.g. a city inside a company name): resample."""
    if any(values[k] in user for k in KEYS if k not in shown):
        return True
    return ("city" not in shown and bool(_ANY_CITY.search(user))) or (
        "company" not in shown and bool(_ANY_COMPANY.search(user))
    )


def _example(rng: random.Random, split: Split) -> tuple[dict[str, Any], Template] | None:
    """One record and its style, or None when this draw cannot make a clean example (the caller redraws).

    A contact keeps its details while up to five styles are tried, so that sparse contacts (one detail, no
    name) are not lost to the styles that need a name: their share stays close to what PRESENCE asks for.
    """
    values, extras = _contact(rng, split)
    keep = {k: rng.random() < PRESENCE[k] for k in KEYS}
    if rng.random() < 0.05:
        only = rng.choice(KEYS)
        keep = {k: k == only for k in KEYS}
    masked: dict[str, str | None] = {k: values[k] if keep.get(k, keep["name"]) else None for k in values}
    for _ in range(5):
        use_eval_only = split == "eval" and rng.random() < EVAL_ONLY_SHARE
        template = rng.choice(_EVAL_STYLES if use_eval_only else _SHARED_STYLES)
        record = _record(rng, template, values, masked, extras)
        if record is not None:
            return record, template
    return None


def _record(
    rng: random.Random,
    template: Template,
    values: dict[str, str],
    masked: dict[str, str | None],
    extras: dict[str, str],
) -> dict[str, Any] | None:
    """Renders the contact in one of the style's variants; None when no variant gives a clean example."""
    for variant in rng.sample(template.variants, len(template.variants)):
        try:
            marked = _tidy(_Renderer(rng, masked, extras).render(variant))
        except _Fail:
            continue
        shown = set(_MARK.findall(marked))
        if "\x01company\x02." in marked and values["company"] not in POOLS["company"] + POOLS["company/eval"]:
            return None  # "Acme Inc." ending a sentence could be "Acme Inc" or "Acme Inc.": ambiguous label
        user = _MARK.sub(lambda m: values[m.group(1)], marked)
        if not shown & set(KEYS) or ("first" in shown and "name" not in shown) or len(user) > MAX_USER_CHARS:
            return None
        if _leaks(user, values, shown):
            return None
        reference = {k: values[k] if k in shown else None for k in KEYS}
        assert all(v in user for v in reference.values() if v is not None), (user, reference)
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
            {"role": "assistant", "content": json.dumps(reference, ensure_ascii=False)},
        ]
        return {"messages": messages}
    return None


def generate(
    n: int, split: Split, seed: int | None = None, *, exclude: Collection[str] = (), with_meta: bool = False
) -> list[dict[str, Any]]:
    """``n`` distinct examples for ``split``, reproducible from ``seed`` (default: the split's shipped seed).

    ``exclude`` holds user messages that must not be produced (the other split's). With ``with_meta`` each
    record also carries ``meta`` = {"template", "eval_only"} so tests can see which style made it.
    """
    if split not in DEFAULT_SEEDS:
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    rng = random.Random(DEFAULT_SEEDS[split] if seed is None else seed)
    seen = set(exclude)
    records: list[dict[str, Any]] = []
    while len(records) < n:
        for _ in range(1000):
            made = _example(rng, split)
            if made is not None and made[0]["messages"][1]["content"] not in seen:
                break
        else:
            raise RuntimeError("contacts generator: 1000 draws in a row failed (a broken template?)")
        record, template = made
        seen.add(record["messages"][1]["content"])
        if with_meta:
            record["meta"] = {"template": template.name, "eval_only": template.eval_only}
        records.append(record)
    return records


def reference_of(record: dict[str, Any]) -> dict[str, str | None]:
    """The expected details of a record, parsed from its assistant reply (ValueError if it is not one)."""
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        raise ValueError("record has no messages")
    if messages[-1].get("role") != "assistant" or not isinstance(messages[-1].get("content"), str):
        raise ValueError("the last message is not an assistant reply")
    try:
        reply = json.loads(messages[-1]["content"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"the assistant reply is not JSON ({exc.msg})") from None
    if not isinstance(reply, dict) or set(reply) != set(KEYS):
        raise ValueError(f"the assistant reply must be a JSON object with exactly the keys {', '.join(KEYS)}")
    if not all(v is None or isinstance(v, str) for v in reply.values()):
        raise ValueError("every value in the assistant reply must be a string or null")
    return {k: reply[k] for k in KEYS}


def builtin_path(split: Split) -> Path:
    """Where the shipped file of ``split`` lives inside the package."""
    if split not in DEFAULT_SEEDS:
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    return Path(__file__).parent / "builtin" / f"contacts_{split}.jsonl"


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Reads a contacts JSONL file, checking each line so that a bad file is reported by name and line."""
    records: list[dict[str, Any]] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(str(path), f"cannot read the file ({exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(str(path), f"not valid JSON ({exc.msg})", number) from None
        roles = [m.get("role") for m in record.get("messages", [])] if isinstance(record, dict) else None
        if roles != ["system", "user", "assistant"]:
            raise DataError(str(path), "expected messages with the roles system, user, assistant", number)
        try:
            reference_of(record)
        except ValueError as exc:
            raise DataError(str(path), str(exc), number) from None
        records.append(record)
    if not records:
        raise DataError(str(path), "the file holds no examples")
    return records


def load(split: Split) -> list[dict[str, Any]]:
    """The shipped examples of ``split``."""
    return read_records(builtin_path(split))


def write_builtin(out_dir: str | Path) -> dict[str, Path]:
    """Generates both splits with the default seeds and sizes and writes them as JSONL (only "messages")."""
    train = generate(DEFAULT_SIZES["train"], "train")
    train_users = {r["messages"][1]["content"] for r in train}
    evals = generate(DEFAULT_SIZES["eval"], "eval", exclude=train_users)
    overlap = train_users.intersection(r["messages"][1]["content"] for r in evals)
    assert not overlap, f"user messages in both splits: {sorted(overlap)[:3]}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for split, records in (("train", train), ("eval", evals)):
        paths[split] = out / f"contacts_{split}.jsonl"
        write_jsonl(paths[split], records)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lorakit.tasks.contacts", description="Regenerates the shipped contacts JSONL files."
    )
    parser.add_argument("--out", type=Path, default=builtin_path("train").parent, help="output folder")
    args = parser.parse_args(argv)
    for split, path in write_builtin(args.out).items():
        print(f"wrote {DEFAULT_SIZES[split]} {split} examples to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
