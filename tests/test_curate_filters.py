"""The heuristic quality filters, rule by rule, and against datatrove when it is installed.

Each rule gets a document kept just inside its threshold and one dropped just
past it, with every other rule of that filter switched off so the reason is
unambiguous. The last tests (skipped unless datatrove 0.10 and spaCy are
importable) check that the words, decisions, reasons and C4's edited text
equal datatrove's on about 200 documents built from data/sample.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from smolray.curate.filters import FILTERS, C4Quality, FineWebQuality, GopherQuality, GopherRepetition
from smolray.curate.words import count_sentences, split_words

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def only(cls, *keep: str, **values):
    """A config with every rule off except `keep` (at their published defaults) and `values`."""
    off = {}
    for name, field in cls.model_fields.items():
        if name in ("step", "stop_words", "short_line_length", "line_punct_exclude_zero") or name in keep:
            continue
        off[name] = False if field.annotation in (bool, "bool") else None
    return cls(step=cls.model_fields["step"].annotation.__args__[0], **{**off, **values})


def word(i: int) -> str:
    """A distinct 5-letter lower-case word (the "z" keeps clear of English contractions)."""
    return "z" + "".join(string.ascii_lowercase[i // 26**k % 26] for k in range(4))


def words(n: int, start: int = 0) -> list[str]:
    return [word(i) for i in range(start, start + n)]


def good_document() -> str:
    """Ten distinct sentence lines that pass every filter at its defaults."""
    w = iter(words(100))
    return "\n".join(f"The {next(w)} {next(w)} of {next(w)} and {next(w)} with {next(w)} {next(w)} to "
                     f"{next(w)} {next(w)} {next(w)} {next(w)}." for _ in range(10))


def test_the_good_document_passes_everything_at_the_defaults():
    text = good_document()
    for cls in FILTERS:
        cfg = cls(step=cls.model_fields["step"].annotation.__args__[0])
        assert cfg.check(text) == (text, None), cls.__name__


def test_configs_are_strict_typed_steps():
    assert [c.model_fields["step"].annotation.__args__[0] for c in FILTERS] == [
        "gopher_quality", "gopher_repetition", "c4_quality", "fineweb_quality"]
    step = TypeAdapter(list[FILTERS[0] | FILTERS[1] | FILTERS[2] | FILTERS[3]])
    cfgs = step.validate_python([{"step": "c4_quality", "filter_no_terminal_punct": False},
                                 {"step": "gopher_repetition", "top_2_gram_char_frac": 0.25}])
    assert isinstance(cfgs[0], C4Quality) and not cfgs[0].filter_no_terminal_punct
    assert cfgs[1].top_2_gram_char_frac == 0.25 and cfgs[1].dup_10_gram_char_frac == 0.10
    with pytest.raises(ValidationError):
        GopherQuality(step="gopher_quality", min_stop_word=3)  # a typo is an error, not a no-op
    assert GopherQuality(step="gopher_quality").min_doc_words == 50
    assert FineWebQuality(step="fineweb_quality").char_duplicates_ratio == 0.01


# ---- words -------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ('"My dear Mr. Bennet," said she...', ['"', "My", "dear", "Mr.", "Bennet", ",", '"', "said", "she", "..."]),
    ("don't can't it's cannot", ["do", "n't", "ca", "n't", "it", "'s", "can", "not"]),
    ("well-known e.g., U.S. end.Next", ["well", "-", "known", "e.g.", ",", "U.S.", "end", ".", "Next"]),
    ("see www.example.com/a-b. 5km 50% (8) foo():", ["see", "www.example.com/a-b", ".", "5", "km", "50", "%",
                                                   "(", "8)", "foo", "(", "):"]),
    ("come--Mr. Bingley", ["come", "--", "Mr.", "Bingley"]),
])
def test_words_split_like_the_blank_spacy_english_tokenizer(text, expected):
    assert split_words(text) == expected


def test_sentences_end_at_a_terminal_token_before_a_non_punctuation_one():
    assert count_sentences("One here. Two here! Three?") == 3
    assert count_sentences('Mr. Smith said "Yes." and left.') == 2  # "Mr." is one token; '"' is punctuation
    assert count_sentences("No terminal at all") == 1


# ---- Gopher quality --------------------------------------------------------------

def test_gopher_doc_length_counts_words_not_punctuation():
    cfg = only(GopherQuality, "min_doc_words", "max_doc_words", max_doc_words=60)
    base = ["the", "of"]
    assert cfg.check(" ".join(base + words(48)) + " . , ;")[1] is None  # 50 words; punctuation tokens don't count
    assert cfg.check(" ".join(base + words(47)) + " . , ;")[1] == "gopher_quality.min_doc_words"
    assert cfg.check(" ".join(base + words(58)))[1] is None
    assert cfg.check(" ".join(base + words(59)))[1] == "gopher_quality.max_doc_words"


def test_gopher_mean_word_length():
    cfg = only(GopherQuality, "min_avg_word_length", "max_avg_word_length")
    three = [w[:3] for w in words(60)]
    assert cfg.check(" ".join(three))[1] is None  # mean exactly 3
    assert cfg.check(" ".join(three[:-1] + ["of"]))[1] == "gopher_quality.min_avg_word_length"
    ten = ["the", "and"] + [w * 2 for w in words(57)]  # 6 + 57 * 10 characters
    assert cfg.check(" ".join(ten + ["x" * 24]))[1] is None  # 600 / 60
    assert cfg.check(" ".join(ten + ["x" * 25]))[1] == "gopher_quality.max_avg_word_length"


@pytest.mark.parametrize("symbol", [" #", " ...", " …"])
def test_gopher_symbol_to_word_ratio(symbol):
    cfg = only(GopherQuality, "max_symbol_word_ratio")
    body = " ".join(words(100))  # 100 tokens, then each symbol is one more
    assert cfg.check(body + symbol * 11)[1] is None  # 11 / 111
    assert cfg.check(body + symbol * 12)[1] == "gopher_quality.max_symbol_word_ratio"  # 12 / 112


def test_gopher_bullet_and_ellipsis_lines():
    cfg = only(GopherQuality, "max_bullet_lines_ratio", "max_ellipsis_lines_ratio")
    lines = [" ".join(words(5, 5 * i)) for i in range(20)]
    bullets = lambda k: "\n".join(("- " if i % 2 else "  • ") + s if i < k else s for i, s in enumerate(lines))
    assert cfg.check(bullets(18))[1] is None  # 0.9
    assert cfg.check(bullets(19))[1] == "gopher_quality.max_bullet_lines_ratio"
    trailing = lambda k: "\n".join(s + ("..." if i % 2 else " …  ") if i < k else s for i, s in enumerate(lines))
    assert cfg.check(trailing(6))[1] is None  # 0.3
    assert cfg.check(trailing(7))[1] == "gopher_quality.max_ellipsis_lines_ratio"


def test_gopher_alpha_words_share_counts_every_token():
    cfg = only(GopherQuality, "min_alpha_words_ratio")
    body = " ".join(words(80))
    assert cfg.check(body + " 123" * 20)[1] is None  # 80 / 100 tokens have a letter
    assert cfg.check(body + " 123" * 18 + " .,")[1] is None  # punctuation tokens count too: "." and ","
    assert cfg.check(body + " 123" * 20 + " .")[1] == "gopher_quality.min_alpha_words_ratio"


def test_gopher_needs_two_distinct_lower_case_stop_words():
    cfg = only(GopherQuality, "min_stop_words")
    body = " ".join(words(60))
    assert cfg.check(body + " the of")[1] is None
    assert cfg.check(body + " the the the")[1] == "gopher_quality.min_stop_words"
    assert cfg.check(body + " The Of")[1] == "gopher_quality.min_stop_words"  # case-sensitive, as datatrove


# ---- Gopher repetition -------------------------------------------------------------

def test_gopher_repetition_duplicate_paragraphs_and_lines_by_count():
    long = [" ".join(words(40, 40 * i)) for i in range(7)]
    cfg = only(GopherRepetition, "dup_para_frac")
    assert cfg.check("\n\n".join(long + ["Yes."] * 4))[1] is None  # 3 repeats of 11 paragraphs
    assert cfg.check("\n\n".join(long + ["Yes."] * 5))[1] == "gopher_repetition.dup_para_frac"  # 4 of 12
    cfg = only(GopherRepetition, "dup_line_frac")
    assert cfg.check("\n".join(long + ["Yes."] * 4))[1] is None
    assert cfg.check("\n\n\n".join(long + ["Yes."] * 5))[1] == "gopher_repetition.dup_line_frac"  # runs split once


def test_gopher_repetition_counts_characters_of_the_repeats_only():
    cfg = only(GopherRepetition, "dup_line_char_frac")
    x = "a" * 20
    kept = f"{x}\n{x}\n{'b' * 58}"  # 100 characters, the second copy is 20 of them
    assert len(kept) == 100 and cfg.check(kept)[1] is None
    assert cfg.check(f"{x}\n{x}\n{'b' * 57}")[1] == "gopher_repetition.dup_line_char_frac"  # 20 / 99
    cfg = only(GopherRepetition, "dup_para_char_frac")
    assert cfg.check(f"{x}\n\n{x}\n\n{'b' * 56}")[1] is None  # 20 / 100
    assert cfg.check(f"{x}\n\n{x}\n\n{'b' * 55}")[1] == "gopher_repetition.dup_para_char_frac"


@pytest.mark.parametrize("n, threshold", [(2, 0.20), (3, 0.18), (4, 0.16)])
def test_gopher_repetition_top_n_gram_share(n, threshold):
    cfg = only(GopherRepetition, f"top_{n}_gram_char_frac")
    gram = words(n, 1000)
    gram_chars = len(" ".join(gram))

    def doc(repeats: int, filler: int) -> str:
        return " ".join(gram * repeats + words(filler))

    filler = next(f for f in range(1000) if gram_chars * 5 / len(doc(5, f)) <= threshold)
    assert gram_chars * 5 / len(doc(5, filler - 1)) > threshold
    assert cfg.check(doc(5, filler))[1] is None
    assert cfg.check(doc(5, filler - 1))[1] == f"gopher_repetition.top_{n}_gram_char_frac"


def test_gopher_repetition_top_n_gram_counts_a_gram_seen_once():
    # datatrove takes the most common n-gram even when every one occurs once.
    assert only(GopherRepetition, "top_2_gram_char_frac").check("hello world")[1] == (
        "gopher_repetition.top_2_gram_char_frac")


@pytest.mark.parametrize("n, threshold", [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)])
def test_gopher_repetition_duplicated_n_gram_share(n, threshold):
    cfg = only(GopherRepetition, f"dup_{n}_gram_char_frac")

    def doc(total: int) -> str:  # `total` distinct words, then the first n again: 5 * n repeated characters
        w = words(total)
        return " ".join(w + w[:n])

    total = next(t for t in range(n, 1000) if 5 * n / len(doc(t)) <= threshold)
    assert cfg.check(doc(total))[1] is None
    assert cfg.check(doc(total - 1))[1] == f"gopher_repetition.dup_{n}_gram_char_frac"


def test_gopher_repetition_empty_text():
    assert GopherRepetition(step="gopher_repetition").check("") == ("", "gopher_repetition.empty")


# ---- C4 --------------------------------------------------------------------------

FIVE = ["The first line is a sentence.", "The second line is one too!", "Is the third line one?",
        'The fourth line ends in a quote."', "The fifth line ends in an apostrophe.'"]


def c4(lines: list[str], **values) -> tuple[str, str | None]:
    return C4Quality(step="c4_quality", **values).check("\n".join(lines))


def test_c4_removes_failing_lines_and_keeps_the_page():
    bad = ["Two words.", "no terminal punctuation here", "This trails off into an ellipsis...",
           "Please enable JavaScript to view this page.", "This site uses cookies for analytics.",
           "Read our Privacy Policy before you go.", "A line with a " + "w" * 1001 + " word."]
    text, reason = c4(FIVE[:2] + bad + FIVE[2:])
    assert reason is None and text == "\n".join(FIVE)
    text, _ = c4(["  Three words here.  "] + FIVE)  # lines are stripped; 3 words is enough
    assert text.splitlines()[0] == "Three words here."
    assert c4(["A line with a " + "w" * 1000 + " word."] + FIVE)[0].startswith("A line with")


def test_c4_terminal_punctuation_rule_can_be_off_as_in_fineweb():
    text, reason = c4(FIVE + ["no terminal punctuation here"], filter_no_terminal_punct=False)
    assert reason is None and text.endswith("no terminal punctuation here")


def test_c4_removes_citation_markers():
    text, _ = c4(FIVE + ["A fact is stated here.[1] Another one.[23][edit]", "An odd claim.[citation needed]"])
    assert text.splitlines()[-2:] == ["A fact is stated here. Another one.", "An odd claim."]
    kept = c4(FIVE + ["Kept as it is.[1]"], remove_citations=False, filter_no_terminal_punct=False)[0]
    assert kept.endswith("Kept as it is.[1]")


def test_c4_page_rules_drop_the_document():
    assert c4(FIVE + ["Lorem Ipsum dolor sit amet."])[1] == "c4_quality.filter_lorem_ipsum"
    assert c4(FIVE + ["The set {1, 2} is small."])[1] == "c4_quality.filter_curly_bracket"
    # Only lines that passed the line rules are looked at, as in datatrove.
    assert c4(FIVE + ["x = {", "}"])[1] is None


def test_c4_needs_five_sentences_in_the_kept_lines():
    assert c4(FIVE[:4])[1] == "c4_quality.min_num_sentences"
    assert c4(FIVE[:4] + ["junk line without punctuation"])[1] == "c4_quality.min_num_sentences"
    assert c4(["One is here. Two is here. Three is here.", "Four is here. Mr. Five is here."])[1] is None
    assert c4(["One is here. Two is here. Three is here.", "Four is here, Mr. Smith said."])[1] == (
        "c4_quality.min_num_sentences")  # "Mr." does not end a sentence


# ---- FineWeb -----------------------------------------------------------------------

def test_fineweb_share_of_lines_ending_in_punctuation():
    cfg = only(FineWebQuality, "line_punct_thr")
    lines = lambda k: "\n".join(" ".join(words(6, 6 * i)) + ("." if i < k else "") for i in range(25))
    assert cfg.check(lines(3))[1] is None  # 3 / 25 = 0.12
    assert cfg.check(lines(2))[1] == "fineweb_quality.line_punct_thr"
    assert cfg.check(lines(0) + '\nends in a quote."\n\n')[1] == "fineweb_quality.line_punct_thr"  # blank lines skipped
    assert only(FineWebQuality, "line_punct_thr", line_punct_exclude_zero=True).check(lines(0))[1] is None


def test_fineweb_share_of_short_lines():
    cfg = only(FineWebQuality, "short_line_thr")
    lines = lambda k: "\n".join(("x" * 30 if i < k else "y" * 31) for i in range(100))
    assert cfg.check(lines(67))[1] is None  # 30 characters is short
    assert cfg.check(lines(68))[1] == "fineweb_quality.short_line_thr"


def test_fineweb_characters_in_duplicated_lines():
    cfg = only(FineWebQuality, "char_duplicates_ratio")
    assert cfg.check("abcdefghij\nabcdefghij\n" + "k" * 980)[1] is None  # 10 / 1000 non-newline characters
    assert cfg.check("abcdefghij\nabcdefghij\n" + "k" * 979)[1] == "fineweb_quality.char_duplicates_ratio"


def test_fineweb_newlines_per_word():
    cfg = only(FineWebQuality, "new_line_ratio")
    text = "\n".join(" ".join(words(3, 3 * i)) for i in range(10))
    assert cfg.check(text)[1] is None  # 9 newlines / 30 words
    assert cfg.check(text + "\n")[1] == "fineweb_quality.new_line_ratio"  # every newline counts, blank or not
    assert FineWebQuality(step="fineweb_quality").check(" \n\n")[1] == "fineweb_quality.empty"


def test_every_reason_names_a_field_of_its_step():
    for cls in FILTERS:
        step = cls.model_fields["step"].annotation.__args__[0]
        for text in ["", "hello world", "- a\n- a\n- a", good_document()[:200], "{ lorem ipsum }. " * 20]:
            reason = cls(step=step).check(text)[1]
            if reason is not None:
                prefix, field = reason.split(".")
                assert prefix == step and (field in cls.model_fields or field == "empty"), reason


# ---- agreement with datatrove ---------------------------------------------------------

def sample_documents() -> list[str]:
    """About 200 texts: sample documents and mutilated copies that land on both sides of the rules."""
    src = {f: [json.loads(line)["text"] for line in open(SAMPLE / f"{f}.jsonl")] for f in ("prose", "math", "code")}
    docs = src["prose"][::14] + src["math"][::14] + src["code"][::8]  # 50 + 36 + 17
    out = list(docs)
    for i, t in enumerate(docs[::2]):
        lines = t.splitlines()
        out.append(t[: 150 + 40 * i])  # truncated, mid-word
        out.append("\n".join(lines[:6] * 3 + lines[6:]))  # repeated lines
        out.append("\n".join(("- " if j % 3 else "• ") + s for j, s in enumerate(lines) if s.strip()))  # bullets
    for t in docs[1::6]:
        out.append(t.translate(str.maketrans("", "", string.punctuation)))  # no punctuation
        out.append("\n\n".join([t[:400]] * 3))  # repeated paragraphs
        out.append(t.replace(". ", "...\n"))  # ellipses and short lines
    return out


@pytest.fixture(scope="module")
def datatrove_filters():
    pytest.importorskip("datatrove")
    pytest.importorskip("spacy")
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter)

    return [(GopherQuality(step="gopher_quality"), GopherQualityFilter()),
            (GopherRepetition(step="gopher_repetition"), GopherRepetitionFilter()),
            (C4Quality(step="c4_quality"), C4QualityFilter()),
            (C4Quality(step="c4_quality", filter_no_terminal_punct=False),
             C4QualityFilter(filter_no_terminal_punct=False)),
            (FineWebQuality(step="fineweb_quality"), FineWebQualityFilter())]


# datatrove's reason -> our field.
REASONS = {
    "gopher_short_doc": "min_doc_words", "gopher_long_doc": "max_doc_words",
    "gopher_below_avg_threshold": "min_avg_word_length", "gopher_above_avg_threshold": "max_avg_word_length",
    "gopher_too_many_hashes": "max_symbol_word_ratio", "gopher_too_many_ellipsis": "max_symbol_word_ratio",
    "gopher_too_many_bullets": "max_bullet_lines_ratio", "gopher_too_many_end_ellipsis": "max_ellipsis_lines_ratio",
    "gopher_below_alpha_threshold": "min_alpha_words_ratio", "gopher_enough_stop_words": "min_stop_words",
    "lorem_ipsum": "filter_lorem_ipsum", "curly_bracket": "filter_curly_bracket",
    "too_few_sentences": "min_num_sentences", "line_punct_ratio": "line_punct_thr",
    "short_line_ratio": "short_line_thr", "char_dup_ratio": "char_duplicates_ratio", "list_ratio": "new_line_ratio",
    **{f"top_{n}_gram": f"top_{n}_gram_char_frac" for n in (2, 3, 4)},
    **{f"duplicated_{n}_n_grams": f"dup_{n}_gram_char_frac" for n in range(5, 11)},
}


def datatrove_decision(flt, text: str) -> tuple[str, str | None]:
    from datatrove.data import Document

    doc = Document(text=text, id="0")
    result = flt.filter(doc)
    if result is True:
        return doc.text, None
    return text, REASONS.get(result[1], result[1])


def test_words_equal_datatrove_english_words():
    pytest.importorskip("datatrove")
    pytest.importorskip("spacy")
    from datatrove.utils.text import split_into_words

    for text in sample_documents():
        assert split_words(text) == list(split_into_words(text))


def test_decisions_equal_datatrove(datatrove_filters):
    docs = sample_documents()
    assert len(docs) >= 200
    for ours, theirs in datatrove_filters:
        kept = 0
        for text in docs:
            got_text, got_reason = ours.check(text)
            want_text, want_reason = datatrove_decision(theirs, text)
            assert (got_reason and got_reason.split(".", 1)[1]) == want_reason, (ours.step, text[:200])
            assert got_reason is not None or got_text == want_text
            kept += got_reason is None
        assert 0 < kept < len(docs), f"{ours.step}: the sample should land on both sides"
