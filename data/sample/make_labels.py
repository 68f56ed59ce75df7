"""Make labelled/edu_scores.jsonl: 300 sample documents with a rule-assigned 0-5 "educational" score.

The rows have the annotate job's shape (`text`, `score` 0-5, plus `id`, `source`, `rule`), so the
quality classifier (jobs/train_classifier.py) can be exercised without an LLM. The scores come from
where a text came from, not from reading it; see SOURCES.md. Seeded, so reruns are byte-identical.
Rerun as `python data/sample/make_labels.py`.
"""
import ast
import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SEED = 20240
MAX_CHARS = 1500
NOISE = 0.15  # share of rows whose score moves one point up or down

# (rule, score, rows); the order is the order rows are drawn in, before the final shuffle.
RULES = [
    ("math-sympy-docs", 5, 60),       # SymPy narrative documentation
    ("math-mpmath-docstring", 4, 60),  # mpmath reference docstrings
    ("code-with-docstring", 3, 50),    # stdlib module that opens with a docstring
    ("code-no-docstring", 2, 20),      # stdlib module without one
    ("fiction", 1, 80),                # an Austen passage
    ("fiction-fragment", 0, 15),       # an Austen passage cut to its first ~100 characters
    ("boilerplate", 0, 15),            # only navigation, cookie and footer lines
]


def load(name):
    with open(HERE / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def cut(text, limit=MAX_CHARS):
    """At most `limit` characters, ending at a line break (or a space) when one is near the end."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    for sep in ("\n", " "):
        i = head.rfind(sep)
        if i >= limit * 2 // 3:
            return head[:i].rstrip()
    return head


def fragment(text):
    words, out = text.split(), ""
    for w in words:
        if len(out) + len(w) + 1 > 100:
            break
        out = (out + " " + w).strip()
    return out


def has_docstring(text):
    try:
        return ast.get_docstring(ast.parse(text)) is not None
    except SyntaxError:
        return False


def pools():
    math, code, prose = load("math"), load("code"), load("prose")
    boiler = json.loads((HERE / "raw" / "web_truth.json").read_text(encoding="utf-8"))["boilerplate_lines"]
    return {
        "math-sympy-docs": [d for d in math if d["origin"].startswith("sympy")],
        "math-mpmath-docstring": [d for d in math if d["origin"].startswith("mpmath")],
        "code-with-docstring": [d for d in code if has_docstring(d["text"])],
        "code-no-docstring": [d for d in code if not has_docstring(d["text"])],
        "fiction": prose,
        "fiction-fragment": prose,
        "boilerplate": boiler,
    }


def main():
    rng = random.Random(SEED)
    pool, rows, used_prose = pools(), [], set()
    for rule, score, n in RULES:
        if rule == "boilerplate":
            for _ in range(n):
                lines = rng.sample(pool[rule], rng.randint(3, 7))
                rows.append({"source": "raw/web_truth.json boilerplate_lines", "text": "\n".join(lines),
                             "rule": rule, "base": score})
            continue
        candidates = [d for d in pool[rule] if d["id"] not in used_prose]
        for d in sorted(rng.sample(candidates, n), key=lambda d: d["id"]):
            used_prose.add(d["id"])  # a passage is either whole fiction or a fragment, never both
            text = fragment(d["text"]) if rule == "fiction-fragment" else cut(d["text"])
            rows.append({"source": d["id"], "text": text, "rule": rule, "base": score})
    rng.shuffle(rows)
    out = HERE / "labelled" / "edu_scores.jsonl"
    out.parent.mkdir(exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            score = r.pop("base")
            if rng.random() < NOISE:
                score = min(5, max(0, score + rng.choice((-1, 1))))
            f.write(json.dumps({"id": f"edu-{i}", "text": r["text"], "score": score, "source": r["source"],
                                "rule": r["rule"]}, ensure_ascii=False) + "\n")
    print(f"{len(rows)} rows -> {out}")


if __name__ == "__main__":
    main()
