"""Prompts: Cosmopedia-style generation prompts and the educational-value rubric.

A generation prompt is fixed by four parts (topic, seed passage, audience,
format); its id is a hash of those parts and the template version, so a
rerun recognises what it already generated. Seed passages come from a
keyword (BM25) search of the topic over a corpus.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter
from dataclasses import dataclass

TEMPLATE = "cosmo-v1"
RUBRIC = "edu-v1"
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if len(w) > 2]


def doc_id(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def read_topics(path: str) -> list[str]:
    """One topic per line; blank lines and `#` comments skipped; duplicates refused."""
    from smolray.data.shards import filesystem

    fs, p = filesystem(path)
    try:
        with fs.open_input_stream(p) as f:
            lines = f.read().decode().splitlines()
    except FileNotFoundError:
        raise ValueError(f"generate.topics={path}: no such file; write one topic per line "
                         "(see data/synth/topics.txt)") from None
    topics = [t.strip() for t in lines if t.strip() and not t.strip().startswith("#")]
    seen = [t for t, n in Counter(topics).items() if n > 1]
    if seen:
        raise ValueError(f"generate.topics={path}: the topic {seen[0]!r} is listed twice")
    if not topics:
        raise ValueError(f"generate.topics={path}: no topics; write one per line")
    return topics


class KeywordIndex:
    """BM25 over passages: the best-matching passage for a topic, no model needed."""

    def __init__(self, passages: list[str], k1: float = 1.2, b: float = 0.75):
        self.passages = passages
        self.tf = [Counter(_words(p)) for p in passages]
        self.len = [sum(c.values()) for c in self.tf]
        self.avg = sum(self.len) / max(1, len(self.len))
        df = Counter(w for c in self.tf for w in c)
        n = len(passages)
        self.idf = {w: math.log(1 + (n - d + 0.5) / (d + 0.5)) for w, d in df.items()}
        self.k1, self.b = k1, b

    def search(self, query: str, k: int = 1) -> list[int]:
        terms = set(_words(query))
        scores = []
        for i, tf in enumerate(self.tf):
            s = 0.0
            for w in terms & tf.keys():
                f = tf[w]
                s += self.idf[w] * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * self.len[i] / self.avg))
            scores.append((s, -i))
        return [-i for s, i in sorted(scores, reverse=True)[:k]]


def passages(texts, max_chars: int) -> list[str]:
    """Documents cut into paragraph-aligned passages of at most max_chars."""
    out = []
    for text in texts:
        cur = ""
        for para in re.split(r"\n\s*\n", text):
            para = para.strip()
            if not para:
                continue
            if cur and len(cur) + len(para) + 2 > max_chars:
                out.append(cur)
                cur = ""
            cur = (cur + "\n\n" + para).strip() if cur else para[:max_chars]
        if cur:
            out.append(cur)
    return out


@dataclass(frozen=True)
class Prompt:
    id: str
    topic: str
    seed_id: str
    seed: str
    audience: str
    format: str
    text: str


def generation_prompt(topic: str, seed: str, audience: str, fmt: str) -> str:
    return (f"Here is an extract from a document:\n\n\"{seed}\"\n\n"
            f"Write a {fmt} about \"{topic}\" for {audience}, using the extract only as inspiration. "
            f"Match the depth, vocabulary and examples to {audience}. "
            "Do not mention the extract, and start directly with the content.")


def plan_prompts(topics: list[str], index: KeywordIndex, audiences: list[str], formats: list[str],
                 n: int, seed: int) -> list[Prompt]:
    """n distinct (topic, audience, format) combinations, drawn without replacement."""
    combos = [(t, a, f) for t in topics for a in audiences for f in formats]
    if n > len(combos):
        raise ValueError(f"generate.prompts={n} exceeds the {len(topics)} topics x {len(audiences)} audiences "
                         f"x {len(formats)} formats = {len(combos)} distinct prompts; add topics or lower prompts")
    random.Random(seed).shuffle(combos)
    best = {t: index.search(t, 1)[0] for t in topics}
    out = []
    for topic, audience, fmt in combos[:n]:
        seed_text = index.passages[best[topic]]
        sid = doc_id(seed_text)
        pid = hashlib.blake2b("\x1f".join([TEMPLATE, topic, sid, audience, fmt]).encode(),
                              digest_size=8).hexdigest()
        out.append(Prompt(pid, topic, sid, seed_text, audience, fmt,
                          generation_prompt(topic, seed_text, audience, fmt)))
    return out


def rubric_prompt(text: str) -> str:
    """The educational-value rubric: five additive criteria, then a fixed last line to parse."""
    return (
        "Judge how useful the document below would be for teaching, from primary school to college. "
        "Add one point for each criterion it meets:\n"
        "1. It gives some basic information on an educational topic, even amid ads or off-topic text.\n"
        "2. It covers elements relevant to education but does not align closely with school standards.\n"
        "3. It is appropriate for educational use and introduces key concepts relevant to school curricula.\n"
        "4. It is highly relevant and beneficial for learning at school level, with clear, coherent writing.\n"
        "5. It is outstanding for teaching: detailed reasoning, easy to follow, no distracting content.\n"
        "A document that meets none of them gets 0 points.\n\n"
        f"Document:\n{text}\n\n"
        "Explain your judgement in at most 80 words, then end with a line of the form "
        "\"Educational score: <points>\".")


# "Educational score: 3", "**Educational Score:** 3/5", "educational score - 4".
_SCORE = re.compile(r"educational\s+score\s*\**\s*[:=\-]?\s*\**\s*([0-5])(?:\s*/\s*5)?(?![0-9.])", re.I)


def parse_score(reply: str) -> int | None:
    """The score from the reply's last "Educational score: N" (N in 0..5), else None.

    No guessing: a bare number elsewhere in the reply is not a score, and a
    reply whose score is out of range counts as unparsed.
    """
    found = _SCORE.findall(reply or "")
    return int(found[-1]) if found else None
