"""Make the chat sample from the prose/code/math corpus next to this file.

chat/sft.jsonl: 240 conversations (continue an Austen passage, say what a stdlib def/class does,
explain a math heading). chat/dpo.jsonl: 160 pairs, chosen = the true answer, rejected = its words
shuffled. Seeded, so reruns are byte-identical. Rerun as `python data/sample/make_chat.py`.
"""
import ast
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).parent
SEED = 1234
BUDGET = 690  # chars per conversation, a little under the 700 limit
SYSTEMS = ["You are a helpful assistant.", "Answer briefly and plainly.", "Keep replies short.", "Be concise."]
MORE = ["Go on.", "And then?", "Continue.", "What comes next?", "Tell me more."]
ABBR = ("Mr.", "E.g.", "Mrs.", "Dr.", "St.", "Col.", "Capt.", "e.g.", "i.e.", "etc.", "vs.", "cf.")
RULE = re.compile(r"([=\-~^*#\"+`])\1{2,}")
CODE = re.compile(r"^(\s|>>>|\.\.|[-*|+$]|\d+\.)", re.M)  # examples, directives, lists, tables
END = re.compile(r"[.!?][\"')*_`]*\s*$")

def flat(s):
    return " ".join(s.split())

def sentences(text):
    out = []
    for s in re.findall(r"\S.*?(?:[.!?][\"')_]*(?=\s|$)|$)", flat(text)):
        if out and out[-1].endswith(ABBR):  # "Mr. Bennet" must not end a sentence
            out[-1] += " " + s
        else:
            out.append(s)
    return out

def chunks(sents, n, hi):
    """n answers of up to hi chars, each made of whole consecutive sentences (may come out short)."""
    out, i = [], 0
    for _ in range(n):
        out.append("")
        while i < len(sents) and len(out[-1]) + len(sents[i]) + 1 <= hi:
            out[-1], i = (out[-1] + " " + sents[i]).strip(), i + 1
    return out

def prose(doc):
    paras = doc["text"].split("\n\n")
    return sentences(" ".join(p for p in paras if not re.fullmatch(r"(?i)(chapter|volume) \w+\.?", p)))

def code(doc):
    pairs = []  # (qualified name, first docstring paragraph), in source order

    def walk(body, prefix):
        for node in body:
            # private helpers make dull questions; a docstring opening with a signature answers nothing
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name[0] != "_":
                if (text := ast.get_docstring(node)) and not text.startswith(node.name + "("):
                    pairs.append((prefix + node.name, flat(text.split("\n\n")[0])))
                if isinstance(node, ast.ClassDef):
                    walk(node.body, prefix + node.name + ".")
    walk(ast.parse(doc["text"]).body, "")
    return (doc["origin"].split(" Lib/")[1], pairs) if pairs else None

def math(doc):
    """(title, prose sentences) per section; code, lists, directives and tables are left out."""
    text = re.sub(r"```.*?```", "\n\n", doc["text"], flags=re.S)
    # :func:`~mpmath.acos` and {func}`~.solve` read as `acos` and `solve`
    text = re.sub(r"(?::[\w:]+:|(?<!\w)\{[\w:]+\})`(~?)([^`]+)`",
                  lambda m: "`" + (m[2].split(".")[-1] if m[1] else m[2]) + "`", text)
    lines, secs, body = text.split("\n"), [], []
    title = "mpmath." + doc["origin"].rsplit(".", 1)[1] if "mpmath" in doc["origin"] else None
    for i, line in enumerate(lines):
        md = re.fullmatch(r"#{1,6} (.+)", line)
        if md or line.strip() and i + 1 < len(lines) and RULE.fullmatch(lines[i + 1].strip()):
            secs.append((title, body))
            title, body = (md[1] if md else line).strip(), []
        elif not RULE.fullmatch(line.strip()):
            body.append(line)
    out = []
    for title, body in secs + [(title, body)]:
        # whole prose paragraphs only (one cut short by a formula is dropped), and the first
        # must open the section so that the answer is what the heading introduces
        paras = re.split(r"\n{2,}", "\n".join(body).strip("\n"))
        good = [p for p in paras if not CODE.search(p) and END.search(p) and not p[0].islower()]
        if title and good and good[0] is paras[0] and len(title) <= 80:
            if " " not in title and "mpmath" not in title:  # "Introduction" alone says nothing
                title += f" (SymPy {Path(doc['origin']).stem})"
            out.append((flat(title).rstrip(":"), sentences(" ".join(good))))
    return out

def make(src, unit, n, rng, hi, room):
    """A prompt, n answers and n - 1 follow-ups (None: pick later) from a parsed doc."""
    more = None
    if src == "prose":
        k, w = rng.randrange(max(1, len(unit) - 2)), rng.choice([1, 2])
        prompt, sents = "Continue this passage: " + " ".join(unit[k:k + w]), unit[k + w:]
    elif src == "code":
        path, pairs = unit
        k = rng.randrange(max(1, len(pairs) - n + 1))
        got = pairs[k:k + n]  # fewer than n when the file is short; build() rejects that
        more = [rng.choice(["And `{}`?", "What about `{}`?"]).format(q) for q, _ in got[1:]]
        return f"What does `{got[0][0]}` in `{path}` do?", [a for _, a in got], more
    else:
        title, sents = rng.choice(unit)
        prompt = rng.choice(["Explain {}.", "Explain {} briefly.", "Tell me about {}."]).format(title)
    return prompt, chunks(sents, n, min(hi, (room - len(prompt) - 16 * (n - 1)) // n)), more

def build(src, docs, n, rng, hi, room, seen):
    for _ in range(10 ** 5):
        prompt, ans, more = make(src, rng.choice(docs), n, rng, hi, room)
        more = more or [rng.choice(MORE) for _ in ans[1:]]
        # three distinct words at least, or a word shuffle could give back the same text
        ok = len(ans) == n and all(40 <= len(a) <= hi and len(set(a.split())) > 2 for a in ans)
        # a topic is used once, whatever the prompt wording, across both files
        ok = ok and len(prompt) < 250 and not {prompt, ans[0][:40]} & seen
        if ok and len(prompt + "".join(ans + more)) <= room:
            seen |= {prompt, ans[0][:40]}
            return prompt, ans, more
    raise SystemExit(f"not enough {src} material for {n} exchanges")

def main():
    rng = random.Random(SEED)
    half = {}
    for src, parse in (("prose", prose), ("code", code), ("math", math)):
        units = [u for x in open(HERE / f"{src}.jsonl", encoding="utf-8") if (u := parse(json.loads(x)))]
        half[src] = units[0::2], units[1::2]  # even docs feed SFT, odd ones DPO: no shared prompts
    srcs, turns, sysf, seen = ["prose", "code", "math"] * 80, [1, 2, 3] * 80, [True] * 60 + [False] * 180, set()
    for xs in (srcs, turns, sysf):
        rng.shuffle(xs)
    (HERE / "chat").mkdir(exist_ok=True)
    with open(HERE / "chat" / "sft.jsonl", "w", encoding="utf-8") as f:
        for src, n, has_sys in zip(srcs, turns, sysf):
            msgs = [{"role": "system", "content": rng.choice(SYSTEMS)}] if has_sys else []
            room = BUDGET - sum(len(m["content"]) for m in msgs)
            prompt, ans, more = build(src, half[src][0], n, rng, 300, room, seen)
            for q, a in zip([prompt] + more, ans):
                msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
    with open(HERE / "chat" / "dpo.jsonl", "w", encoding="utf-8") as f:
        for i, src in zip(range(160), ["prose", "code", "math"] * 54):
            prompt, (good,), _ = build(src, half[src][1], 1, rng, 250, 500, seen)
            bad = good
            while bad == good:  # a shuffle can land on the original order; draw again
                bad = " ".join(rng.sample(good.split(), len(good.split())))
            if i % 2 == 0:  # even rows hold chat-format pairs, odd rows plain strings, on purpose
                user = {"role": "user", "content": prompt}
                good, bad = ([user, {"role": "assistant", "content": x}] for x in (good, bad))
            f.write(json.dumps({"prompt": prompt, "chosen": good, "rejected": bad}, ensure_ascii=False) + "\n")

if __name__ == "__main__":
    main()
