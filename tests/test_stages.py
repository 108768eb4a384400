"""Stage ids assigned on generated token ids, checked against labels known by construction.

Each completion is built from pieces whose stage label is known (-1 for tags and text
outside stages). A token's expected label is the stage holding most of its characters
(ties to the earlier stage), -1 if it holds none: the documented rule.
"""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from crpo_ray.stages import assign_stage_ids, stage_texts, token_text_spans

STAGES = ["stimulus", "primary_appraisal", "secondary_appraisal", "reaction", "mental_state"]


def well_formed_pieces():
    pieces = [(" A friend stopped answering my messages.", 0), ("</stimulus>", -1), ("\n", -1)]
    texts = ["It feels personal and threatening.", "No one else to talk to.", "Withdrawal, sadness.",
             "Signs of loneliness."]
    for k, text in enumerate(texts, start=1):
        name = STAGES[k]
        pieces += [(f"<{name}>", -1), (text, k), (f"</{name}>", -1), ("\n", -1)]
    pieces += [("</think>", -1), ("\n", -1), ("<answer>", -1), (" Yes ", -1), ("</answer>", -1)]
    return pieces


def char_labels(pieces):
    text, labels = "", []
    for piece, lab in pieces:
        text += piece
        labels += [lab] * len(piece)
    return text, labels


def spans_by_prefix_decode(ids, tok):
    """Character span of each token from decoded prefixes (exact for ASCII text)."""
    spans, prev = [], 0
    for i in range(len(ids)):
        end = len(tok.decode(ids[: i + 1], skip_special_tokens=True))
        spans.append((prev, end))
        prev = end
    return spans


def expected_ids(pieces, ids, tok):
    _, labels = char_labels(pieces)
    out = []
    for a, b in spans_by_prefix_decode(ids, tok):
        counts = {}
        for lab in labels[a:b]:
            if lab >= 0:
                counts[lab] = counts.get(lab, 0) + 1
        out.append(min(counts, key=lambda k: (-counts[k], k)) if counts else -1)
    return out


def check(pieces, tok, ids=None, prefilled=True):
    text, _ = char_labels(pieces)
    ids = tok(text, add_special_tokens=False)["input_ids"] if ids is None else ids
    got = assign_stage_ids(ids, tok, STAGES, prefilled=prefilled)
    assert got == expected_ids(pieces, ids, tok)
    return ids, got


@pytest.fixture(scope="module")
def straddling_tokenizer():
    """Byte-level BPE trained so that merges cross tag boundaries (".</", ">\\n<", "s>" ...)."""
    corpus = []
    for i in range(300):
        for name in STAGES:
            corpus.append(f"word{i % 7}.</{name}>\n<{STAGES[(STAGES.index(name) + 1) % 5]}>text{i % 5}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="\u0000", behavior="isolated")  # no pre-splitting
    tok.pre_tokenizer = pre_tokenizers.Sequence([tok.pre_tokenizer, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")


@pytest.fixture(scope="module")
def metaspace_tokenizer():
    """A SentencePiece-style (Metaspace, not byte-level) tokenizer: the decode path."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    text, _ = char_labels(well_formed_pieces())
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"], show_progress=False)
    tok.train_from_iterator([text] * 20 + ["abcdefghijklmnopqrstuvwxyz<>/_.,!?\n ABCDEFGHIJKLMNOPQRSTUVWXYZ"], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


def test_well_formed_tiny_tokenizer(tiny_tokenizer):
    ids, got = check(well_formed_pieces(), tiny_tokenizer)
    assert set(got) == {-1, 0, 1, 2, 3, 4}
    # tags span several tokens in this tokenizer
    assert len(tiny_tokenizer("</primary_appraisal>", add_special_tokens=False)["input_ids"]) > 1


def test_tags_split_and_straddled(straddling_tokenizer):
    tok = straddling_tokenizer
    pieces = well_formed_pieces()
    text, labels = char_labels(pieces)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    spans = spans_by_prefix_decode(ids, tok)
    straddles = [i for i, (a, b) in enumerate(spans) if len({labels[c] >= 0 for c in range(a, b)}) == 2]
    assert straddles, "the fixture must produce tokens that cross a tag boundary"
    assert any(len(tok(f"<{n}>", add_special_tokens=False)["input_ids"]) > 1 for n in STAGES)
    check(pieces, tok, ids)


def test_generated_ids_differ_from_retokenization(tiny_tokenizer):
    # A model may emit a non-canonical spelling (one token per character); labels follow the ids.
    text, _ = char_labels(well_formed_pieces())
    ids = [i for ch in text for i in tiny_tokenizer(ch, add_special_tokens=False)["input_ids"]]
    assert ids != tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    check(well_formed_pieces(), tiny_tokenizer, ids)


def test_decode_path_for_non_byte_level(metaspace_tokenizer):
    tok = metaspace_tokenizer
    text, _ = char_labels(well_formed_pieces())
    ids = tok(text, add_special_tokens=False)["input_ids"]
    full, _ = token_text_spans(ids, tok)
    assert isinstance(full, str)  # decoded text, not bytes: the generic path ran
    got = assign_stage_ids(ids, tok, STAGES)
    # Metaspace decoding may change spaces; compare on the decoded text's own tags.
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert [s.strip() for s in stage_texts(decoded, STAGES)] == [
        "A friend stopped answering my messages.", "It feels personal and threatening.",
        "No one else to talk to.", "Withdrawal, sadness.", "Signs of loneliness."]
    # every token is labeled by the stage its decoded characters fall in
    _, spans = token_text_spans(ids, tok)
    from crpo_ray.stages import char_stage_labels, prefill_text

    pre = prefill_text(STAGES)
    lab = char_stage_labels(pre + full, STAGES)[len(pre):]
    for i, (a, b) in enumerate(spans):
        inside = [x for x in lab[a:b] if x >= 0]
        assert got[i] == (max(set(inside), key=lambda k: (inside.count(k), -k)) if inside else -1)


def test_multibyte_character_split_across_tokens(tiny_tokenizer):
    pieces = [(" I feel 🗣🗣 alone ü", 0), ("</stimulus>", -1), ("<reaction>", -1), ("tears 😢", 3)]
    text, _ = char_labels(pieces)
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    got = assign_stage_ids(ids, tiny_tokenizer, STAGES)
    assert any("\ufffd" in tiny_tokenizer.decode([i]) for i in ids)  # a character spans several tokens
    n_before_close = len(tiny_tokenizer(" I feel 🗣🗣 alone ü", add_special_tokens=False)["input_ids"])
    assert set(got[:n_before_close]) == {0}
    assert got[-1] == 3


@pytest.mark.parametrize(
    "pieces",
    [
        # missing closing tag: the next tag ends the stage
        [(" event", 0), ("<primary_appraisal>", -1), (" matters", 1), ("<reaction>", -1), (" cries", 3)],
        # repeated stage: labeled by the tag that opened it
        [(" a", 0), ("</stimulus>", -1), ("<stimulus>", -1), (" b", 0), ("</stimulus>", -1)],
        # wrong order
        [(" a", 0), ("</stimulus>", -1), ("<mental_state>", -1), (" m", 4), ("</mental_state>", -1),
         ("<primary_appraisal>", -1), (" p", 1)],
        # nesting is not followed: the inner tag ends the outer stage, text after its close is outside
        [(" a", 0), ("<reaction>", -1), (" b", 3), ("</reaction>", -1), (" c", -1), ("</stimulus>", -1)],
        # truncated in the middle of a closing tag
        [(" a long thought", 0), ("</stimul", -1)],
        # truncated right after "<"
        [(" a", 0), ("</stimulus>", -1), ("\n", -1), ("<", -1)],
        # unknown tags and stray brackets are content
        [(" a <foo> b <3 c", 0), ("</stimulus>", -1)],
        # no tags at all: all of it is the prefilled first stage
        [(" just text with no structure at all", 0)],
        # closes think early; the answer is outside every stage
        [(" a", 0), ("</think>", -1), ("<answer>", -1), ("Yes", -1), ("</answer>", -1)],
        # a closing tag for a stage never opened
        [(" a", 0), ("</reaction>", -1), (" b", -1)],
    ],
    ids=["missing-close", "repeated", "wrong-order", "nested", "trunc-mid-tag", "trunc-lt", "unknown-tags",
         "no-tags", "early-answer", "stray-close"],
)
def test_malformed_completions(pieces, tiny_tokenizer, straddling_tokenizer):
    for tok in (tiny_tokenizer, straddling_tokenizer):
        check(pieces, tok)


def test_not_prefilled(tiny_tokenizer):
    pieces = [("<think>", -1), ("\n", -1), ("<stimulus>", -1), (" x", 0), ("</stimulus>", -1), (" y", -1)]
    check(pieces, tiny_tokenizer, prefilled=False)
    # without the prefill, text before any tag is outside every stage
    ids = tiny_tokenizer(" loose text", add_special_tokens=False)["input_ids"]
    assert set(assign_stage_ids(ids, tiny_tokenizer, STAGES, prefilled=False)) == {-1}


def test_special_and_unknown_ids_never_raise(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok(" a</stimulus>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id, tok.pad_token_id, 10**6]
    got = assign_stage_ids(ids, tok, STAGES)
    assert got[-3:] == [-1, -1, -1] and got[0] == 0
    assert assign_stage_ids([], tok, STAGES) == []
    assert assign_stage_ids([tok.eos_token_id], tok, STAGES) == [-1]


def test_custom_stage_names(tiny_tokenizer):
    names = ["observe", "judge"]
    pieces = [(" seen", 0), ("</observe>", -1), ("<judge>", -1), (" ok", 1), ("</judge>", -1)]
    text, _ = char_labels(pieces)
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    got = assign_stage_ids(ids, tiny_tokenizer, names)
    assert got == expected_ids(pieces, ids, tiny_tokenizer)
