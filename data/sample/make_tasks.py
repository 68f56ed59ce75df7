"""Make the multiple-choice eval sample from the prose/code/math corpus next to this file.

tasks/prose_cloze.jsonl: finish an Austen sentence. tasks/code_cloze.jsonl: name the stdlib def/class
a docstring sentence describes. tasks/math_cloze.jsonl: name the mpmath/SymPy function a sentence
describes. 40 rows each, {"id", "query", "choices", "gold"}, scored by the log-likelihood of
query + choice, so every choice starts with one space. Seeded, so reruns are byte-identical.
Rerun as `python data/sample/make_tasks.py`.
"""
import json
import random
import re
from collections import Counter
from pathlib import Path

from make_chat import code, math, prose, sentences  # same parsing, so both samples agree

HERE = Path(__file__).parent
SEED = 4321
ROWS = 40

def texts(x):
    if isinstance(x, str):
        return x
    return " ".join(texts(v) for v in (x.values() if isinstance(x, dict) else x))

def load(src, parse):
    return [(d, u) for x in open(HERE / f"{src}.jsonl", encoding="utf-8") if (u := parse(d := json.loads(x)))]

def cut(sent, rng):
    """(first 4-8 words, rest) of a sentence, or None when too short to leave a real ending."""
    words = sent.split()
    n = rng.randint(4, 8)
    return (" ".join(words[:n]), " ".join(words[n:])) if len(words) >= n + 3 else None

def whole(sent):
    # "as described in H. Cohen" splits at the initial; such a half sentence makes no question
    return not re.search(r"\b[A-Z]\.$", sent)

def plain(sent):
    # a quote or _italics_ in the ending would hint which choice closes what the query opened
    return not re.search(r'["_]', sent)

def prose_rows(rng, chat):
    docs, used = [(d["origin"], i, u) for i, (d, u) in enumerate(load("prose", prose))], set()
    while True:
        book, i, sents = rng.choice(docs)
        k, w = rng.randrange(max(1, len(sents) - 2)), rng.choice([1, 2])
        if k + w >= len(sents) or not plain(sents[k + w]) or not (got := cut(sents[k + w], rng)):
            continue
        head, end = got
        query = " ".join(sents[k:k + w] + [head])
        # "* * *" scene breaks are no prose; one target sentence makes one row
        if sents[k + w] in used or sents[k + w] in chat or sents[k] in chat or "*" in query \
                or len(query) < 80 or not 20 <= len(end) <= 160:
            continue
        # endings from other passages of the same novel, so names and style do not give it away
        others = set()
        for _ in range(2000):
            b, j, ss = rng.choice(docs)
            s = rng.choice(ss)
            if b == book and j != i and plain(s) and (c := cut(s, rng)):
                if 1 / 1.5 <= len(c[1]) / len(end) <= 1.5 and c[1] != end:
                    others.add(c[1])
            if len(others) == 3:
                break
        else:
            continue
        used.add(sents[k + w])
        yield query, end, sorted(others)

def code_rows(rng, chat):
    pairs = [(q.rsplit(".", 1)[-1], para) for _, (_, ps) in load("code", code) for q, para in ps]
    count = Counter(name for name, _ in pairs)
    names = sorted(n for n in count if count[n] == 1 and len(n) > 2)  # a name used twice is ambiguous
    cands = [p for p in pairs if count[p[0]] == 1 and len(p[0]) > 2 and p[1] not in chat]
    rng.shuffle(cands)
    for name, para in cands:
        first = sentences(para)[0]
        if name.lower() in first.lower() or len(first.split()) < 4 or ">>>" in first or not whole(first):
            continue
        query = f"Question: Which Python function or class does this describe? {first}\nAnswer:"
        # CamelCase marks a class, so distractors share the gold's case
        pool = [n for n in names if n[0].isupper() == name[0].isupper() and n != name and n not in first]
        yield query, name, rng.sample(pool, 3)

def unname(term, sent):
    """The sentence with `term` / ``term(...)`` turned into "it", and the term it spelled."""
    pat = re.compile(r"``?(" + re.escape(term) + r")(?:\([^`]*\))?``?", re.I)
    m = pat.search(sent)
    out = pat.sub("it", sent)
    if pat.match(sent):
        out = "It" + out[2:]
    return out, (m[1] if m else term), bool(m)

def math_rows(rng, chat):
    docs = load("math", math)
    # any documented mpmath name may be a distractor, not just those that made a question
    names = {d["origin"].rsplit(".", 1)[1] for d, _ in docs if "mpmath" in d["origin"]}
    cands, pools = [], {True: names, False: set()}
    for d, secs in docs:
        for title, sents in secs:
            mp = title.startswith("mpmath.")
            term = title[7:] if mp else re.sub(r" \(SymPy [^)]*\)$", "", title).strip("`")
            if not sents or not re.fullmatch(r"\w+", term):
                continue
            sent, term, hit = unname(term, sents[0])
            # a SymPy heading is only a term when the text names it as code
            if (mp or hit) and not re.search(rf"(?i)\b{re.escape(term)}\b", sent):
                pools[mp].add(term)
                # "identities 1 and 2 from above" points at text the question leaves out
                if sents[0] not in chat and len(sent.split()) > 3 and whole(sent) \
                        and not re.search(r"identit\w* \d|above", sent):
                    cands.append((mp, term, sent))
    used = set()
    rng.shuffle(cands)
    for mp, term, sent in cands:
        if term in used:
            continue
        used.add(term)
        query = f"Question: Which term does this describe? {sent}\nAnswer:"
        pool = sorted(t for t in pools[mp] | (set() if mp else pools[True]) if t != term and t not in sent)
        yield query, term, rng.sample(pool, 3)

def main():
    # text already used by make_chat.py; rows built on it are skipped
    chat = " ".join(texts(json.loads(x)) for p in sorted(HERE.glob("chat/*.jsonl")) for x in open(p, encoding="utf-8"))
    (HERE / "tasks").mkdir(exist_ok=True)
    for i, (task, make) in enumerate((("prose", prose_rows), ("code", code_rows), ("math", math_rows))):
        rng = random.Random(SEED + i)
        golds, seen, n = [0, 1, 2, 3] * (ROWS // 4), set(), 0
        rng.shuffle(golds)  # exactly ROWS/4 golds at each position, in a seeded order
        with open(HERE / "tasks" / f"{task}_cloze.jsonl", "w", encoding="utf-8") as f:
            for query, gold, others in make(rng, chat):
                if query in seen or len(query) >= 400 or len({gold, *others}) < 4:
                    continue
                seen.add(query)
                choices = [" " + c for c in others]
                choices.insert(golds[n], " " + gold)
                f.write(json.dumps({"id": f"{task}-{n}", "query": query, "choices": choices, "gold": golds[n]},
                                   ensure_ascii=False) + "\n")
                n += 1
                if n == ROWS:
                    break
        if n < ROWS:
            raise SystemExit(f"only {n} {task} rows")

if __name__ == "__main__":
    main()
