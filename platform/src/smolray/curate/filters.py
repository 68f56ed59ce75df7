"""Document-level heuristic quality filters: Gopher quality and repetition, C4 and FineWeb.

Each filter is a typed step config whose fields are the published thresholds
(datatrove 0.10 / FineWeb defaults) and whose `check(text)` returns the text
(only C4 edits it, by dropping lines) and None to keep or "<step>.<field>",
the threshold that rejected it. A field set to None turns its rule off
(datatrove also turns a rule off at 0; here 0 is a threshold like any other).

Decisions follow datatrove's filters rule for rule, including their quirks
(noted where they differ from the papers' wording), and count words the way
its English tokenizer does (`smolray.curate.words`, no spaCy needed).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

from smolray.curate.words import PUNCTUATION, TERMINAL, count_sentences, split_words
from smolray.recipe.schema import _Strict

# Characters that make a token a "symbol" rather than a word (datatrove's set).
SYMBOLS = TERMINAL | frozenset(PUNCTUATION)


def _duplicates(items: list[str]) -> tuple[int, int]:
    """Repeated occurrences (every one after the first) and their characters."""
    seen: set[str] = set()
    count = chars = 0
    for x in items:
        if x in seen:
            count, chars = count + 1, chars + len(x)
        seen.add(x)
    return count, chars


class GopherQuality(_Strict):
    """Gopher (Rae et al. 2021, A.1.1) quality rules."""

    step: Literal["gopher_quality"]
    min_doc_words: int | None = 50  # words counted without pure-punctuation tokens
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1  # "#", and "..." or "…", each per token
    max_bullet_lines_ratio: float | None = 0.9  # lines starting with "•" or "-"
    max_ellipsis_lines_ratio: float | None = 0.3
    # Share of tokens (punctuation tokens included) with a letter; datatrove calls it max_non_alpha_words_ratio.
    min_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2  # distinct stop words present, case-sensitive
    stop_words: tuple[str, ...] = ("the", "be", "to", "of", "and", "that", "have", "with")

    def check(self, text: str) -> tuple[str, str | None]:
        words = split_words(text)
        real = [w for w in words if any(c not in SYMBOLS for c in w)]
        if not real or (self.min_doc_words is not None and len(real) < self.min_doc_words):
            return text, "gopher_quality.min_doc_words"
        if self.max_doc_words is not None and len(real) > self.max_doc_words:
            return text, "gopher_quality.max_doc_words"
        mean = sum(map(len, real)) / len(real)
        if self.min_avg_word_length is not None and mean < self.min_avg_word_length:
            return text, "gopher_quality.min_avg_word_length"
        if self.max_avg_word_length is not None and mean > self.max_avg_word_length:
            return text, "gopher_quality.max_avg_word_length"
        n, lines = len(words), text.splitlines()
        if self.max_symbol_word_ratio is not None and max(
                text.count("#"), text.count("...") + text.count("…")) / n > self.max_symbol_word_ratio:
            return text, "gopher_quality.max_symbol_word_ratio"
        if self.max_bullet_lines_ratio is not None and sum(
                s.lstrip().startswith(("•", "-")) for s in lines) / len(lines) > self.max_bullet_lines_ratio:
            return text, "gopher_quality.max_bullet_lines_ratio"
        if self.max_ellipsis_lines_ratio is not None and sum(
                s.rstrip().endswith(("...", "…")) for s in lines) / len(lines) > self.max_ellipsis_lines_ratio:
            return text, "gopher_quality.max_ellipsis_lines_ratio"
        if self.min_alpha_words_ratio is not None and sum(
                any(c.isalpha() for c in w) for w in words) / n < self.min_alpha_words_ratio:
            return text, "gopher_quality.min_alpha_words_ratio"
        if self.min_stop_words is not None and len(set(self.stop_words) & set(words)) < self.min_stop_words:
            return text, "gopher_quality.min_stop_words"
        return text, None


class GopherRepetition(_Strict):
    """Gopher repetition rules; every share is of len(text), counting only the repeated copies."""

    step: Literal["gopher_repetition"]
    dup_para_frac: float | None = 0.3  # paragraphs: split on 2+ newlines
    dup_para_char_frac: float | None = 0.2
    dup_line_frac: float | None = 0.3  # lines: split on newline runs
    dup_line_char_frac: float | None = 0.2
    # The most frequent n-gram (words joined by spaces) times its count, even if it occurs once.
    top_2_gram_char_frac: float | None = 0.20
    top_3_gram_char_frac: float | None = 0.18
    top_4_gram_char_frac: float | None = 0.16
    # Characters of n-grams already seen, scanning left to right and skipping past each repeat.
    dup_5_gram_char_frac: float | None = 0.15
    dup_6_gram_char_frac: float | None = 0.14
    dup_7_gram_char_frac: float | None = 0.13
    dup_8_gram_char_frac: float | None = 0.12
    dup_9_gram_char_frac: float | None = 0.11
    dup_10_gram_char_frac: float | None = 0.10

    def check(self, text: str) -> tuple[str, str | None]:
        if not text:
            return text, "gopher_repetition.empty"
        for kind, parts in (("para", re.split(r"\n{2,}", text.strip())), ("line", re.split(r"\n+", text))):
            count, chars = _duplicates(parts)
            if (t := getattr(self, f"dup_{kind}_frac")) is not None and count / len(parts) > t:
                return text, f"gopher_repetition.dup_{kind}_frac"
            if (t := getattr(self, f"dup_{kind}_char_frac")) is not None and chars / len(text) > t:
                return text, f"gopher_repetition.dup_{kind}_char_frac"
        words = split_words(text)
        for n in (2, 3, 4):
            grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
            if grams and (t := getattr(self, f"top_{n}_gram_char_frac")) is not None:
                gram, count = Counter(grams).most_common(1)[0]
                if len(gram) * count / len(text) > t:
                    return text, f"gopher_repetition.top_{n}_gram_char_frac"
        for n in range(5, 11):
            if (t := getattr(self, f"dup_{n}_gram_char_frac")) is None:
                continue
            seen: set[str] = set()
            chars = i = 0
            while i <= len(words) - n:
                gram = "".join(words[i:i + n])
                if gram in seen:
                    chars, i = chars + len(gram), i + n
                else:
                    seen.add(gram)
                    i += 1
            if chars / len(text) > t:
                return text, f"gopher_repetition.dup_{n}_gram_char_frac"
        return text, None


_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


class C4Quality(_Strict):
    """C4 (Raffel et al. 2020) line and page rules; lines failing a line rule are removed."""

    step: Literal["c4_quality"]
    remove_citations: bool = True  # "[1]", "[]", "[edit]", "[citation needed]"
    filter_no_terminal_punct: bool = True  # line must end in . ? ! " ' but not "..."; FineWeb ran False
    min_words_per_line: int | None = 3  # whitespace-separated, counted before citations are removed
    max_word_length: int | None = 1000  # a longer word drops its line (the paper's code; not the page)
    filter_javascript: bool = True  # lines mentioning it
    filter_policy: bool = True  # lines with cookie / terms-of-use phrases
    # Page rules, checked only on lines that survived the line rules above.
    filter_lorem_ipsum: bool = True
    filter_curly_bracket: bool = True
    min_num_sentences: int | None = 5  # in the kept lines

    def check(self, text: str) -> tuple[str, str | None]:
        kept, sentences = [], 0
        for line in text.splitlines():
            line = line.strip()
            words = line.split()
            if self.max_word_length is not None and any(len(w) > self.max_word_length for w in words):
                continue
            if self.remove_citations:
                line = _CITATION.sub("", line)
            if self.filter_no_terminal_punct and (not line.endswith((".", "?", "!", '"', "'"))
                                                  or line.endswith("...")):
                continue
            if self.min_words_per_line is not None and len(words) < self.min_words_per_line:
                continue
            low = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in low:
                return text, "c4_quality.filter_lorem_ipsum"
            if self.filter_javascript and "javascript" in low:
                continue
            if self.filter_curly_bracket and "{" in line:
                return text, "c4_quality.filter_curly_bracket"
            if self.filter_policy and any(p in low for p in _POLICY):
                continue
            sentences += count_sentences(line) if self.min_num_sentences is not None else 0
            kept.append(line)
        if self.min_num_sentences is not None and sentences < self.min_num_sentences:
            return text, "c4_quality.min_num_sentences"
        return "\n".join(kept).strip(), None


class FineWebQuality(_Strict):
    """FineWeb's own rules (Penedo et al. 2024), over the non-blank lines."""

    step: Literal["fineweb_quality"]
    line_punct_thr: float | None = 0.12  # min share of lines ending in terminal punctuation
    line_punct_exclude_zero: bool = False  # keep documents with no such line at all
    short_line_length: int = 30
    short_line_thr: float | None = 0.67  # max share of lines of short_line_length characters or fewer
    char_duplicates_ratio: float | None = 0.01  # repeated lines' characters / non-newline characters
    new_line_ratio: float | None = 0.3  # newlines per word

    def check(self, text: str) -> tuple[str, str | None]:
        lines = [s for s in text.split("\n") if s.strip()]
        if not lines:
            return text, "fineweb_quality.empty"
        punct = sum(s[-1] in TERMINAL for s in lines) / len(lines)
        if self.line_punct_thr is not None and punct < self.line_punct_thr and not (
                punct == 0 and self.line_punct_exclude_zero):
            return text, "fineweb_quality.line_punct_thr"
        if self.short_line_thr is not None and sum(
                len(s) <= self.short_line_length for s in lines) / len(lines) > self.short_line_thr:
            return text, "fineweb_quality.short_line_thr"
        if self.char_duplicates_ratio is not None and _duplicates(lines)[1] / len(
                text.replace("\n", "")) > self.char_duplicates_ratio:
            return text, "fineweb_quality.char_duplicates_ratio"
        if self.new_line_ratio is not None and text.count("\n") / len(split_words(text)) > self.new_line_ratio:
            return text, "fineweb_quality.new_line_ratio"
        return text, None


FILTERS = (GopherQuality, GopherRepetition, C4Quality, FineWebQuality)
