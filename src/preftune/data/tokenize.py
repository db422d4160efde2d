"""Chat templates, tokenisation with the prompt masked from the loss, truncation, and collation."""
from __future__ import annotations

import warnings

import torch

from .load import Row

# Used for conversational rows when the tokenizer has no chat template of its own:
# "<|user|>\nHello</s>\n<|assistant|>\nHi!</s>\n" (each turn ends with EOS, so the model learns to stop).
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token or '' }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
IGNORE = -100


def render(tokenizer, prompt, completion=None) -> tuple[str, str | None]:
    """Prompt and prompt + completion as text: strings pass through (concatenated); message lists go
    through the chat template, the prompt with the generation prompt, then the whole conversation."""
    if isinstance(prompt, str):
        return prompt, None if completion is None else prompt + completion
    template = tokenizer.chat_template or PLAIN_CHAT_TEMPLATE
    prompt_text = tokenizer.apply_chat_template(prompt, chat_template=template, tokenize=False,
                                                add_generation_prompt=True)
    if completion is None:
        return prompt_text, None
    return prompt_text, tokenizer.apply_chat_template(prompt + completion, chat_template=template, tokenize=False)


def common_prefix(a, b) -> int:
    """How many leading items two sequences (token ids, strings, message lists) share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class Encoder:
    """Token ids as the model's own tokenizer and chat template define them, as TRL does:

    * plain text: the prompt is ``tokenizer(prompt)`` (BOS only where the tokenizer adds one) and each
      sequence ``tokenizer(prompt + completion)`` with EOS appended when it does not end with it;
    * conversational: the chat template renders the prompt (with the generation prompt) and the whole
      conversation, tokenised without added special tokens (a template that writes BOS writes it
      once); the completion ends with the template's own end-of-turn, with nothing appended. A
      tokenizer without a template gets ``PLAIN_CHAT_TEMPLATE``, tokenised as plain text is (its
      turns end with EOS);

    The completion is what a sequence adds after the longest prefix that every sequence of the row
    shares with the prompt (tokens can merge across the boundary). Truncation: the prompt is cut to
    ``max_prompt_length`` (from the left by default, keeping a leading special token: BOS, [CLS]),
    then each completion so that prompt + completion ≤ ``max_length``, keeping the special token an
    encoder's tokenizer closes every text with ([SEP], </s>); a completion cut away entirely is an
    error. ``truncated`` counts the rows and tokens cut."""

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int, truncation_side: str = "left"):
        self.tok = tokenizer
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.truncation_side = truncation_side
        self.truncated = {"prompt_rows": 0, "prompt_tokens": 0, "completion_rows": 0, "completion_tokens": 0}
        self._warned = False
        self.special = set(tokenizer.all_special_ids)
        probe = tokenizer("a")["input_ids"]   # a closing special token the tokenizer adds to every text
        self.closing = probe[-1] if len(probe) > 1 and probe[-1] in self.special else None

    def _ids(self, text: str, prompt) -> list[int]:
        """Ids of rendered text; the model's own chat template writes every special token itself."""
        templated = not isinstance(prompt, str) and self.tok.chat_template is not None
        return self.tok(text, add_special_tokens=not templated)["input_ids"]

    def _sequence(self, prompt, completion) -> list[int]:
        ids = self._ids(render(self.tok, prompt, completion)[1], prompt)
        eos = self.tok.eos_token_id
        if isinstance(prompt, str) and eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        return ids

    def _cut_prompt(self, ids: list[int]) -> list[int]:
        limit = self.max_prompt_length
        if len(ids) <= limit:
            return ids
        self.truncated["prompt_rows"] += 1
        self.truncated["prompt_tokens"] += len(ids) - limit
        if self.truncation_side == "right":
            return ids[:limit]
        keep = 1 if ids[0] in self.special and limit > 1 else 0
        return ids[:keep] + ids[len(ids) - (limit - keep):]

    def encode_parts(self, prompt, completions: list) -> tuple[str, list[int], list[list[int]]]:
        """(prompt text, prompt ids, completion ids) of one prompt and its completions, truncated."""
        prompt_text = render(self.tok, prompt)[0]
        prompt_ids = self._ids(prompt_text, prompt)
        sequences = [self._sequence(prompt, c) for c in completions]
        shared = min([common_prefix(prompt_ids, s) for s in sequences], default=len(prompt_ids))
        # (an encoder's tokenizer ends the prompt alone with its [SEP]: special tokens there are no divergence)
        merged = set(prompt_ids[shared:]) - self.special
        if merged and not self._warned:
            self._warned = True
            warnings.warn(f"the tokenised prompt is not a prefix of the tokenised prompt + completion (tokens merge "
                          f"across the boundary, or the chat template renders the prompt differently); the completion "
                          f"starts where they diverge, after {shared} of the prompt's {len(prompt_ids)} tokens",
                          stacklevel=2)
        prompt_ids = self._cut_prompt(prompt_ids[:shared])
        room = max(0, self.max_length - len(prompt_ids))
        cut = []
        for s in sequences:
            completion = s[shared:]
            if len(completion) > room:
                self.truncated["completion_tokens"] += len(completion) - room
                close = completion[-1] == self.closing and room > 1
                completion = completion[:room - 1] + completion[-1:] if close else completion[:room]
            cut.append(completion)
        self.truncated["completion_rows"] += any(len(s) - shared > room for s in sequences)
        return prompt_text, prompt_ids, cut

    def encode(self, row: Row, example: dict) -> dict:
        """Token ids of a validated example: prompt_ids plus completion_ids / chosen_ids +
        rejected_ids / completions_ids (+ ranking), or prompt_ids alone for prompt-only rows."""
        fields = [f for f in ("completion", "chosen", "rejected") if f in example]
        texts = [example[f] for f in fields] + list(example.get("completions", []))
        names = fields + [f"completions[{i}]" for i in range(len(example.get("completions", [])))]
        try:
            prompt_text, prompt_ids, completions = self.encode_parts(example["prompt"], texts)
        except Exception as e:  # noqa: BLE001 - a template error is a row error
            raise row.error("prompt", f"chat template failed: {e}", "invalid") from None
        for name, ids in zip(names, completions):
            if not ids:
                raise row.error(name, f"the completion would be removed entirely by truncation (prompt has "
                                      f"{len(prompt_ids)} tokens, max_length={self.max_length})",
                                "truncated_completion")
        out = {"prompt_ids": prompt_ids, "prompt_text": prompt_text}
        out.update({f"{f}_ids": ids for f, ids in zip(fields, completions)})
        if "completions" in example:
            out["completions_ids"] = completions[len(fields):]
            out["ranking"] = example["ranking"]
        for key in ("margin", "label"):
            if key in example:
                out[key] = example[key]
        return out


def collate(sequences: list[tuple[list[int], list[int]]], pad_id: int, *, train_on_prompt: bool = False):
    """Right-pad (prompt, completion) id pairs into input_ids, attention_mask and labels
    (prompt and padding set to -100 unless ``train_on_prompt``)."""
    length = max(len(p) + len(c) for p, c in sequences)
    n = len(sequences)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    labels = torch.full((n, length), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    for i, (p, c) in enumerate(sequences):
        ids = p + c
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention_mask[i, :len(ids)] = 1
        start = 1 if train_on_prompt else len(p)
        labels[i, start:len(ids)] = torch.tensor(ids[start:])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# Attention slot lengths (models.attention): a sequence's slot is the shortest of these that holds it
# (beyond, the next multiple of 256); each step wastes at most ~1.6× the causal work of the sequence.
# A short ladder also keeps shapes repeating from batch to batch (see ``pack``).
SLOT_LENGTHS = (32, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024)


def slot_length(n: int) -> int:
    return next((s for s in SLOT_LENGTHS if n <= s), round_up(n, 256))


def pack(sequences: list[tuple[list[int], list[int]]], pad_id: int, *, train_on_prompt: bool = False) -> dict:
    """Padding-free batch: the (prompt, completion) sequences one after another in a single row,
    padded only to a multiple of 64 tokens (attention never crosses sequences, see below, so rows
    would only add padding). ``position_ids`` restart at 0 for each sequence (and for the padding
    tail). ``segments`` gives each position's sequence index (−1 for padding) and ``last_index``
    each sequence's last token as a flat index into the row, in input order.

    ``gather``, ``scatter`` and ``groups`` map between the row and right-padded attention slots for
    ``models.attention``: sequences are grouped by slot length (``slot_length``), ``groups`` holds
    each group's (sequences, slot length), ``gather`` (S,) the flat row position of every slot
    token, group after group, and ``scatter`` (1, T) each row position's index into those S slot
    tokens; a position with no counterpart (a slot past its sequence's end, row padding) holds the
    one-past-the-end index (T, resp. S).

    Shapes repeat from batch to batch: T is rounded up to a multiple of 64, slots come from a short
    ladder. On CPU, oneDNN builds a kernel for every new bf16 matmul shape (measured 3-13 ms each,
    against 1-2 ms for the matmul itself), so batches whose shapes all differ would pay that in
    every step."""
    lengths = [len(p) + len(c) for p, c in sequences]
    length = round_up(sum(lengths), 64)
    input_ids = torch.full((1, length), pad_id, dtype=torch.long)
    labels = torch.full((1, length), IGNORE, dtype=torch.long)
    segments = torch.full((1, length), -1, dtype=torch.long)
    position_ids = torch.zeros((1, length), dtype=torch.long)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    for i, ((p, c), at, n) in enumerate(zip(sequences, starts, lengths)):
        ids = p + c
        input_ids[0, at:at + n] = torch.tensor(ids)
        start = 1 if train_on_prompt else len(p)
        labels[0, at + start:at + n] = torch.tensor(ids[start:])
        segments[0, at:at + n] = i
        position_ids[0, at:at + n] = torch.arange(n)
    position_ids[0, sum(lengths):] = torch.arange(length - sum(lengths))
    slots = sorted({slot_length(n) for n in lengths})
    groups = tuple((sum(slot_length(n) == s for n in lengths), s) for s in slots)
    total = sum(n * s for n, s in groups)
    gather = torch.full((total,), length, dtype=torch.long)
    scatter = torch.full((length,), total, dtype=torch.long)
    at = 0
    for s in slots:
        for i in (i for i in range(len(sequences)) if slot_length(lengths[i]) == s):
            gather[at:at + lengths[i]] = starts[i] + torch.arange(lengths[i])
            scatter[starts[i]:starts[i] + lengths[i]] = at + torch.arange(lengths[i])
            at += s
    last_index = torch.tensor([a + n - 1 for a, n in zip(starts, lengths)])
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "segments": segments,
            "last_index": last_index, "gather": gather, "scatter": scatter.view(1, length), "groups": groups}


def batch_sequences(sequences, pad_id: int, *, packing: bool, train_on_prompt: bool = False) -> dict:
    """``pack`` or right-padded ``collate``, as configured."""
    if packing:
        return pack(sequences, pad_id, train_on_prompt=train_on_prompt)
    return collate(sequences, pad_id, train_on_prompt=train_on_prompt)


def real_tokens(batch: dict) -> int:
    """Non-padding tokens of a padded or packed batch."""
    if "segments" in batch:
        return int((batch["segments"] >= 0).sum())
    return int(batch["attention_mask"].sum())
