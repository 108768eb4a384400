"""Stage segmentation on the generated token ids themselves.

Each completion token gets the index (0..K-1) of the appraisal stage whose content
it lies in, or -1 for tags, the ``<think>``/``<answer>`` wrappers, whitespace between
blocks and anything outside every stage.

How the text is recovered, exactly and without re-tokenizing:

* byte-level BPE tokenizers (GPT-2, Qwen, Llama 3, the tiny model): each token id
  maps to its exact bytes through the byte-level alphabet; added tokens map to
  their content (special ones to nothing). Tags are ASCII, so spans are exact even
  where a token splits a multi-byte character.
* any other tokenizer: the decoded prefix ``decode(ids[:i+1])`` gives each token's
  end offset in the decoded text (the longest prefix that agrees with the full
  decode, so a token that ends inside a multi-byte character is handled).

Rules (a defined answer for every input, never an exception):

* With ``prefilled=True`` the text is read as ``"<think>\\n<" + stage_names[0] + ">"``
  followed by the completion, so the first stage is open before the first token.
* An opening stage tag starts that stage's content; the next tag of any kind ends
  it (a missing closing tag is implied by the next tag; nesting is not followed).
  Repeated stages are labeled by the tag that opened them, wherever they occur.
* A tag cut off by truncation at the very end (``"</react"``) is a tag, not content.
* A token that covers several regions takes the stage with most of its bytes that
  are stage content; a token with no stage-content bytes gets -1.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import List, Sequence, Tuple

OUTSIDE = -1


def prefill_text(stage_names: Sequence[str]) -> str:
    """The text the assistant turn is prefilled with: ``<think>\\n<first_stage>``."""
    return f"<think>\n<{stage_names[0]}>"


# --------------------------------------------------------------------------- tag parsing


@lru_cache(maxsize=64)
def _tag_regex(names: Tuple[str, ...], as_bytes: bool):
    alts = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    pattern = f"<(/?)({alts})>"
    return re.compile(pattern.encode() if as_bytes else pattern)


def _truncated_tag_start(text, names: Sequence[str]) -> int:
    """Start of a tag cut off at the end of ``text`` (``<``, ``</sta``...), else len(text)."""
    lt = "<" if isinstance(text, str) else b"<"
    pos = text.rfind(lt)
    if pos < 0:
        return len(text)
    tail = text[pos + 1:]
    if isinstance(tail, bytes):
        try:
            tail = tail.decode("ascii")
        except UnicodeDecodeError:
            return len(text)
    if ">" in tail:
        return len(text)
    bare = tail[1:] if tail.startswith("/") else tail
    if any(n.startswith(bare) for n in names):
        return pos
    return len(text)


def char_stage_labels(text, stage_names: Sequence[str]) -> List[int]:
    """Stage label of every character (str) or byte (bytes) of ``text``."""
    names = tuple(stage_names)
    index = {n: i for i, n in enumerate(names)}
    regex = _tag_regex(names + ("think", "answer"), isinstance(text, bytes))
    labels = [OUTSIDE] * len(text)
    end = _truncated_tag_start(text, names + ("think", "answer"))
    current = OUTSIDE
    pos = 0
    for m in regex.finditer(text, 0, end):
        if current != OUTSIDE:
            labels[pos:m.start()] = [current] * (m.start() - pos)
        closing, name = m.group(1), m.group(2)
        if isinstance(name, bytes):
            name = name.decode("ascii")
        current = index[name] if (not closing and name in index) else OUTSIDE
        pos = m.end()
    if current != OUTSIDE and end > pos:
        labels[pos:end] = [current] * (end - pos)
    return labels


# --------------------------------------------------------------------------- token spans


@lru_cache(maxsize=8)
def _byte_decoder() -> dict:
    """The inverse of GPT-2's bytes-to-unicode alphabet used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        decoder = backend.decoder
        if decoder is None:
            return False
        if type(decoder).__name__ == "ByteLevel":
            return True
        try:
            return b"ByteLevel" in bytes(decoder.__getstate__())
        except Exception:  # noqa: BLE001 - an unknown decoder is simply not byte-level
            return False
    return hasattr(tokenizer, "byte_decoder")


def _added_token_bytes(tokenizer) -> dict:
    """id -> bytes for added tokens (special ones decode to nothing)."""
    out = {}
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    for tid, tok in decoder.items():
        out[int(tid)] = b"" if getattr(tok, "special", False) else str(tok).encode("utf-8")
    for tid in getattr(tokenizer, "all_special_ids", []) or []:
        out[int(tid)] = b""
    return out


def _byte_spans(token_ids: Sequence[int], tokenizer):
    """(full bytes, [start, end) byte span per token), or None if not byte-level mappable."""
    table = _byte_decoder()
    added = _added_token_bytes(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(token_ids))
    spans, chunks, pos = [], [], 0
    for tid, piece in zip(token_ids, pieces):
        if int(tid) in added:
            data = added[int(tid)]
        elif piece is None:
            data = b""  # an id outside the vocabulary decodes to nothing
        else:
            try:
                data = bytes(table[c] for c in piece)
            except KeyError:
                return None
        chunks.append(data)
        spans.append((pos, pos + len(data)))
        pos += len(data)
    return b"".join(chunks), spans


def _decode_spans(token_ids: Sequence[int], tokenizer):
    """(full text, [start, end) character span per token) from decoded prefixes."""
    ids = list(token_ids)
    if not ids:
        return "", []
    full = tokenizer.decode(ids, skip_special_tokens=True)
    prefixes = tokenizer.batch_decode([ids[: i + 1] for i in range(len(ids))], skip_special_tokens=True)
    spans, prev = [], 0
    for text in prefixes:
        n = min(len(text), len(full))
        while n > prev and not full.startswith(text[:n]):
            n -= 1
        end = max(n, prev)
        spans.append((prev, end))
        prev = end
    return full, spans


def token_text_spans(token_ids: Sequence[int], tokenizer):
    """The completion's text (bytes for byte-level tokenizers, else str) and each token's span."""
    if _is_byte_level(tokenizer):
        result = _byte_spans(token_ids, tokenizer)
        if result is not None:
            return result
    return _decode_spans(token_ids, tokenizer)


# --------------------------------------------------------------------------- entry point


def assign_stage_ids(token_ids: Sequence[int], tokenizer, stage_names: Sequence[str], prefilled: bool = True) -> List[int]:
    """Stage index (0..K-1) of every completion token, -1 outside stages. See module docs."""
    token_ids = [int(t) for t in token_ids]
    if not token_ids or not stage_names:
        return [OUTSIDE] * len(token_ids)
    text, spans = token_text_spans(token_ids, tokenizer)
    prefix = prefill_text(stage_names) if prefilled else ""
    if isinstance(text, bytes):
        prefix = prefix.encode("ascii")
    labels = char_stage_labels(prefix + text, stage_names)
    shift = len(prefix)
    out = []
    num_stages = len(stage_names)
    for start, end in spans:
        if end <= start:
            out.append(OUTSIDE)
            continue
        counts = [0] * num_stages
        for lab in labels[shift + start: shift + end]:
            if lab != OUTSIDE:
                counts[lab] += 1
        best = max(range(num_stages), key=lambda k: (counts[k], -k))
        out.append(best if counts[best] > 0 else OUTSIDE)
    return out


def stage_texts(completion: str, stage_names: Sequence[str], prefilled: bool = True) -> List[str]:
    """The content text of each stage (concatenated if repeated; "" if absent), for display."""
    prefix = prefill_text(stage_names) if prefilled else ""
    full = prefix + completion
    labels = char_stage_labels(full, stage_names)
    parts = [[] for _ in stage_names]
    for ch, lab in zip(full, labels):
        if lab != OUTSIDE:
            parts[lab].append(ch)
    return ["".join(p) for p in parts]
