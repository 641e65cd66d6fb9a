"""NIAH documents: exact lengths, spans from offsets, passkeys that decode back."""

import numpy as np
import pytest

from core.errors import UsageError
from core.tasks import haystack, passkey


@pytest.mark.parametrize("length", [200, 513, 1024, 4096])
@pytest.mark.parametrize("depth", [0.0, 0.33, 1.0])
@pytest.mark.parametrize("filler", ["ruler", "nature"])
def test_exact_length_and_spans(tokenizer, length, depth, filler):
    rng = haystack.document_rng(0, length, 0, 0)
    key = passkey.make_passkey(rng)
    doc = passkey.build_document(tokenizer, length, depth, key, haystack.filler_sentences(filler, rng))
    assert doc.length == length
    assert tokenizer.decode(doc.input_ids[doc.needle].tolist()).strip() == str(key)
    assert doc.needle_sentence[doc.needle].all()  # passkey tokens lie inside the needle sentence
    q = np.flatnonzero(doc.question)
    assert q[-1] == length - 1 and doc.text.endswith("The pass key is")  # question last, ends with the cue
    assert np.flatnonzero(doc.needle_sentence)[-1] < q[0]
    assert abs(doc.depth_actual - depth) < 0.1
    # spans from offsets agree with the text
    sentence = tokenizer.decode(doc.input_ids[doc.needle_sentence].tolist()).strip()
    assert sentence == passkey.NEEDLE.format(passkey=key)


def test_depth_orders_needle_positions(tokenizer):
    starts = []
    for depth in (0.1, 0.5, 0.9):
        rng = haystack.document_rng(0, 1000, 0, 0)
        doc = passkey.build_document(tokenizer, 1000, depth, 12345, haystack.filler_sentences("ruler", rng))
        starts.append(np.flatnonzero(doc.needle)[0])
    assert starts[0] < starts[1] < starts[2]


def test_text_file_filler(tokenizer, tmp_path):
    f = tmp_path / "essay.txt"
    f.write_text("Paul wrote an essay. It was long!  Was it good? Nobody knows.\n" * 3)
    sentences = haystack.filler_sentences(str(f), np.random.default_rng(0))
    assert sentences[:2] == ["Paul wrote an essay.", "It was long!"]
    doc = passkey.build_document(tokenizer, 300, 0.5, 54321, sentences)
    assert doc.length == 300


def test_seeded_documents_repeat():
    a = passkey.make_passkey(haystack.document_rng(3, 1024, 1, 2))
    b = passkey.make_passkey(haystack.document_rng(3, 1024, 1, 2))
    c = passkey.make_passkey(haystack.document_rng(3, 1024, 1, 3))
    assert a == b != c and 10000 <= a <= 99999


def test_parsers():
    assert haystack.parse_lengths("4k,16K,1500") == [4096, 16384, 1500]
    assert haystack.parse_depths("0.1,0.5") == [0.1, 0.5]
    assert haystack.parse_depths("linspace:0,1,5") == [0.0, 0.25, 0.5, 0.75, 1.0]
    s = haystack.parse_depths("sigmoid:0,1,7")
    assert s[0] == 0.0 and s[-1] == 1.0 and s[1] - s[0] < s[4] - s[3]  # denser at the ends
    for bad, words in [("4q", "4q"), ("0", "at least"), ("4k,4k", "repeat")]:
        with pytest.raises(UsageError, match=words):
            haystack.parse_lengths(bad)
    for bad, words in [("1.5", "outside"), ("abc", "abc"), ("cosine:0,1,3", "cosine")]:
        with pytest.raises(UsageError, match=words):
            haystack.parse_depths(bad)
    with pytest.raises(UsageError, match="unknown filler"):
        haystack.parse_filler("lorem")


def test_too_short_length_is_refused(tokenizer):
    with pytest.raises(UsageError, match="too short"):
        passkey.build_document(tokenizer, 20, 0.5, 12345, haystack.RULER_SENTENCES)
