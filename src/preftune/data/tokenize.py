"""Chat templates, tokenisation with the prompt masked from the loss, truncation, and collation."""
from __future__ import annotations

import torch

from .load import Row

# Used for conversational rows when the tokenizer has no chat template of its own:
# "<|user|>\nHello\n<|assistant|>\nHi!\n".
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
IGNORE = -100


def render(tokenizer, prompt, completion=None) -> tuple[str, str | None]:
    """Prompt and completion as text: strings pass through; message lists go through the chat
    template, the completion being what the full conversation adds after the generation prompt."""
    if isinstance(prompt, str) and (completion is None or isinstance(completion, str)):
        return prompt, completion
    template = tokenizer.chat_template or PLAIN_CHAT_TEMPLATE
    prompt_text = tokenizer.apply_chat_template(prompt, chat_template=template, tokenize=False,
                                                add_generation_prompt=True)
    if completion is None:
        return prompt_text, None
    full = tokenizer.apply_chat_template(prompt + completion, chat_template=template, tokenize=False)
    if not full.startswith(prompt_text):
        raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
    return prompt_text, full[len(prompt_text):]


class Encoder:
    """Turns rendered text into token ids with the project's truncation policy:
    the prompt is cut to ``max_prompt_length`` (from the left by default), then the completion is cut
    so that prompt + completion ≤ ``max_length``; a completion cut away entirely is an error."""

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int, truncation_side: str = "left"):
        self.tok = tokenizer
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.truncation_side = truncation_side

    def prompt_ids(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        bos = self.tok.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        if len(ids) > self.max_prompt_length:
            ids = ids[-self.max_prompt_length:] if self.truncation_side == "left" else ids[:self.max_prompt_length]
        return ids

    def completion_ids(self, text: str, prompt_len: int) -> list[int]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        eos = self.tok.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        return ids[:max(0, self.max_length - prompt_len)]

    def encode(self, row: Row, example: dict) -> dict:
        """Token ids of a validated example: prompt_ids plus completion_ids / chosen_ids +
        rejected_ids / completions_ids (+ ranking), or prompt_ids alone for prompt-only rows."""
        out = {}
        try:
            prompt_text, _ = render(self.tok, example["prompt"])
        except Exception as e:  # noqa: BLE001 - a template error is a row error
            raise row.error("prompt", f"chat template failed: {e}", "invalid") from None
        out["prompt_ids"] = self.prompt_ids(prompt_text)
        out["prompt_text"] = prompt_text
        for field in ("completion", "chosen", "rejected"):
            if field in example:
                out[f"{field}_ids"] = self._completion(row, field, example["prompt"], example[field], out)
        if "completions" in example:
            out["completions_ids"] = [self._completion(row, f"completions[{i}]", example["prompt"], c, out)
                                      for i, c in enumerate(example["completions"])]
            out["ranking"] = example["ranking"]
        if "margin" in example:
            out["margin"] = example["margin"]
        return out

    def _completion(self, row: Row, field: str, prompt, completion, out) -> list[int]:
        try:
            _, text = render(self.tok, prompt, completion)
        except Exception as e:  # noqa: BLE001
            raise row.error(field, f"chat template failed: {e}", "invalid") from None
        ids = self.completion_ids(text, len(out["prompt_ids"]))
        if not ids:
            raise row.error(field, f"the completion would be removed entirely by truncation (prompt has "
                                   f"{len(out['prompt_ids'])} tokens, max_length={self.max_length})",
                            "truncated_completion")
        return ids


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


def pack(sequences: list[tuple[list[int], list[int]]], pad_id: int, *, capacity: int = 256,
         train_on_prompt: bool = False) -> dict:
    """Padding-free batch: (prompt, completion) sequences packed first-fit-decreasing into rows of
    ≤ max(capacity, longest) tokens. ``position_ids`` restart at 0 for each sequence (and for each
    row's padding tail), which is how ``transformers`` recognises packed sequences and attends only
    within each one. ``segments`` gives each position's sequence index (−1 for padding) and
    ``last_index`` each sequence's last token as a flat index into the rows, in input order.
    ``gather`` (sequences, L) and ``scatter`` (rows, T) map between the rows and one right-padded
    slot of length L per sequence, for ``models.attention``: gather holds the flat row position of
    each sequence's j-th token, scatter each row position's flat index into the slots; a position
    with no counterpart (a slot past its sequence's end, row padding) holds the one-past-the-end
    index (rows·T, resp. sequences·L).

    Shapes repeat from batch to batch: T is rounded up to a multiple of 64 and L (the longest
    sequence) to a multiple of 16. On CPU, oneDNN builds a kernel for every new bf16 matmul shape
    (measured 3-13 ms each, against 1-2 ms for the matmul itself), so batches whose shapes all
    differ would pay that in every step."""
    width = max(capacity, max(len(p) + len(c) for p, c in sequences))
    order = sorted(range(len(sequences)), key=lambda i: -(len(sequences[i][0]) + len(sequences[i][1])))
    rows: list[list[int]] = []
    used: list[int] = []
    for i in order:
        n = len(sequences[i][0]) + len(sequences[i][1])
        for r, u in enumerate(used):
            if u + n <= width:
                rows[r].append(i)
                used[r] += n
                break
        else:
            rows.append([i])
            used.append(n)
    length = round_up(max(used), 64)
    shape = (len(rows), length)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    last_index = torch.zeros(len(sequences), dtype=torch.long)
    slot = round_up(max(len(p) + len(c) for p, c in sequences), 16)
    gather = torch.full((len(sequences), slot), shape[0] * shape[1], dtype=torch.long)
    scatter = torch.full(shape, len(sequences) * slot, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            p, c = sequences[i]
            ids = p + c
            n = len(ids)
            input_ids[r, at:at + n] = torch.tensor(ids)
            start = 1 if train_on_prompt else len(p)
            labels[r, at + start:at + n] = torch.tensor(ids[start:])
            segments[r, at:at + n] = i
            position_ids[r, at:at + n] = torch.arange(n)
            last_index[i] = r * length + at + n - 1
            gather[i, :n] = r * length + at + torch.arange(n)
            scatter[r, at:at + n] = i * slot + torch.arange(n)
            at += n
        position_ids[r, at:] = torch.arange(length - at)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "segments": segments,
            "last_index": last_index, "gather": gather, "scatter": scatter}


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
