"""Make raw/web.jsonl: a small, messy, web-like crawl for the curation stage to clean up.

Every document is real text from prose.jsonl (Austen), math.jsonl (mpmath/SymPy prose), code.jsonl
(CPython) or raw/foreign_src.jsonl (Debian Administrator's Handbook in fr/de/es/it), with planted
problems: web boilerplate, low-quality pages, exact and near duplicates, non-English pages and a
few pages that leak a benchmark row from tasks/. raw/web_truth.json says which document is which.
Only the boilerplate lines, bullets, hashtags, symbol rows and the classic lorem ipsum are written
here. Seeded with random.Random(0), so reruns are byte-identical. stdlib only; run from the repo
root as `python3 data/sample/make_raw.py`.
"""
import json
import re
import random
from pathlib import Path

HERE = Path(__file__).parent
RAW = HERE / "raw"
rng = random.Random(0)

N_CLEAN_PROSE, N_CLEAN_MATH, N_EXACT, N_NEAR_EACH = 270, 80, 20, 10
NEAR_TARGETS = (0.9, 0.8, 0.7)
LOW = {"short": 6, "bullets": 5, "repeated_lines": 4, "repeated_paragraphs": 3,
       "symbols": 5, "lorem_ipsum": 3, "curly_bracket": 4}

# Boilerplate that real crawls carry around the main text (and that C4/FineWeb-style rules strip).
NAVS = ["Home | About | Contact", "Home | Blog | Archive | Contact", "Home | Books | Authors | About us",
        "Skip to main content", "Menu | Search | Log in"]
BANNERS = ["Accept cookies", "This site uses cookies to improve your experience. By continuing to browse "
           "you agree to our privacy policy.", "We use cookies. Read our cookie policy.",
           "Please enable JavaScript to view this page correctly."]
SHARES = ["Share on Twitter", "Share on Facebook | Share on Twitter | Email", "Tweet | Pin it | Share",
          "Please enable JavaScript to view the comments."]
FOOTERS = ["© {year} {site}. All rights reserved.", "Copyright {year} {site} | Privacy policy | Terms of use",
           "© {year} {site} - Powered by WordPress"]
SITES = {"prose": ["reading-room.example", "old-books.example", "litcorner.example", "pageturner.example",
                   "bookclub.example"],
         "math": ["mathcafe.example", "formula-notes.example", "calc-corner.example"],
         "foreign": ["wiki-{lang}.example", "blog-{lang}.example"]}
# The standard placeholder text (derived from Cicero, public domain); C4 drops any page with it.
LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
         "labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris "
         "nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit "
         "esse cillum dolore eu fugiat nulla pariatur. Excepteur sint occaecat cupidatat non proident, sunt "
         "in culpa qui officia deserunt mollit anim id est laborum.")
SEPARATORS = ["★ ★ ★ ★ ★", "* * * * * * *", "#####", "→ → → → →", "...", "~~~ ~~~ ~~~", "+++ !!! +++"]


def load(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def words(text):
    # the normalisation web_truth.json's Jaccards use: lowercase, punctuation/symbols to spaces
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def ngrams(text, n):
    w = words(text)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def jaccard(a, b):
    return len(a & b) / len(a | b)


def sentences(para):
    # not after Mr./Mrs./Dr./St., which Austen's text is full of
    return [s for s in re.split(r"(?<=[.!?])(?<!Mr\.)(?<!Mrs\.)(?<!Dr\.)(?<!St\.)\s+", para) if s]


# The eval tasks were cut from this same corpus, so any source doc that shares a word 8-gram with a
# task row (query, choices, query+gold) is left out; the only leaks are the ones planted below.
task_rows = {f.name: load(f) for f in sorted((HERE / "tasks").glob("*.jsonl"))}
task_grams = set()
for rows in task_rows.values():
    for r in rows:
        for s in [r["query"], r["query"] + r["choices"][r["gold"]], *r["choices"]]:
            task_grams |= ngrams(s, 8)


def unleaked(text):
    return not ngrams(text, 8) & task_grams


def math_passage(text):
    """The running prose of a docstring/doc page: no formulas, doctests, code blocks or headings
    (a real math site's LaTeX would trip C4's "{" rule), each paragraph's hard wraps joined."""
    keep = []
    for p in re.split(r"\n\s*\n", text):
        if re.search(r"[{}$]|>>>|^\s|^[=\-~^*#.]{3,}", p, re.M):
            continue
        p = " ".join(p.split())
        if len(p.split()) >= 12:
            keep.append(p)
    text = "\n\n".join(keep)
    # enough words; 6+ sentences in lines that end a sentence (C4 keeps only those lines, wants 5);
    # and little repetition (Gopher drops pages with many repeated 5-grams; some SymPy pages have it)
    w = words(text)
    grams = [tuple(w[i:i + 5]) for i in range(len(w) - 4)]
    ok = len(w) >= 120 and c4_sentences(text) >= 6 and len(set(grams)) >= 0.95 * len(grams)
    return text if ok else None


def c4_sentences(text):
    return sum(len(sentences(p)) for p in text.split("\n\n") if p.endswith((".", "!", "?", '"')))


prose = [(d["id"], d["text"]) for d in load(HERE / "prose.jsonl")
         if unleaked(d["text"]) and c4_sentences(d["text"]) >= 6]
math = [(d["id"], p) for d in load(HERE / "math.jsonl") if unleaked(d["text"]) and (p := math_passage(d["text"]))]
code = [(d["id"], d["text"]) for d in load(HERE / "code.jsonl") if unleaked(d["text"]) and "{" in d["text"]]
foreign = load(RAW / "foreign_src.jsonl")
for pool in (prose, math, code):
    rng.shuffle(pool)                         # then every role below pops its own, unshared sources

boilerplate = set()


def wrap(body, site):
    """Nav line, 1-2 banners, the body, a share line and a footer, as a scraped page would have."""
    head = [rng.choice(NAVS)] + rng.sample(BANNERS, rng.randint(1, 2))
    foot = [rng.choice(SHARES), rng.choice(FOOTERS).format(year=rng.randint(2012, 2023), site=site)]
    boilerplate.update(head + foot)
    return "\n".join(head) + "\n\n", body, "\n\n" + "\n".join(foot)


def doc(cat, text, origin, site, parts=None, **info):
    return {"cat": cat, "text": text, "origin": origin, "site": site, "parts": parts, "info": info}


def page(cat, src_id, body, kind, **info):
    site = rng.choice(SITES[kind])
    parts = wrap(body, site)
    return doc(cat, "".join(parts), src_id, site, parts, **info)


docs = []
# 1. clean pages: whole Austen chunks and math prose, wrapped in boilerplate
clean = [page("clean", i, t, "prose") for i, t in (prose.pop() for _ in range(N_CLEAN_PROSE))]
clean += [page("clean", i, t, "math") for i, t in (math.pop() for _ in range(N_CLEAN_MATH))]
docs += clean

# 2. exact duplicates: the same page reposted; a few differ only in whitespace or case
originals = rng.sample(clean, N_EXACT + 3 * N_NEAR_EACH * 2)   # spare, long ones are picked for near
exact_of, near_pool = originals[:N_EXACT], [d for d in originals[N_EXACT:] if len(words(d["parts"][1])) >= 400]
for k, d in enumerate(exact_of):
    kind, text = "verbatim", d["text"]
    if k % 5 == 3:
        # double spaces after full stops, trailing spaces on lines, an extra blank line between blocks
        text = re.sub(r"(?m)(?<=\S)$", "  ", re.sub(r"\. ", ".  ", text)).replace("\n\n", "\n\n\n")
        kind = "whitespace"
    elif k % 5 == 4:
        kind, text = "case", text.lower() if k % 2 else text.upper()
    docs.append(doc("exact", text, d["origin"], rng.choice(SITES["prose"] + SITES["math"]), of=d, kind=kind))


# 3. near duplicates: word edits (replace or insert a word of the same body) at uniformly random
# spots, one at a time, until the word 5-gram Jaccard with the original is just under the target.
def near_copy(d, target):
    head, body, foot = d["parts"]
    paras = [p.split(" ") for p in body.split("\n\n")]
    vocab = [w for p in paras for w in p]
    base, edits = ngrams(d["text"], 5), 0
    while True:
        p = rng.choice([p for p in paras for _ in p])          # a paragraph, weighted by its length
        j, w = rng.randrange(len(p)), rng.choice(vocab)
        if rng.random() < 0.5:
            p[j] = w
        else:
            p.insert(j, w)
        edits += 1
        text = head + "\n\n".join(" ".join(p) for p in paras) + foot
        jac = jaccard(base, ngrams(text, 5))
        if jac <= target + 0.005:            # one edit moves it ~0.01, so this lands within +-0.015
            return text, round(jac, 4), edits


assert len(near_pool) >= 3 * N_NEAR_EACH, "too few long originals for near duplicates"
for k, d in enumerate(near_pool[:3 * N_NEAR_EACH]):
    target = NEAR_TARGETS[k // N_NEAR_EACH]
    text, jac, edits = near_copy(d, target)
    assert abs(jac - target) <= 0.03, (d["origin"], target, jac)
    docs.append(doc("near", text, d["origin"], rng.choice(SITES["prose"]), of=d, target=target,
                    jaccard=jac, edits=edits))

# 4. low-quality pages that Gopher/C4/FineWeb-style filters should drop, each from real text
low = []


def paragraphs(text):
    return [p for p in text.split("\n\n") if len(p.split()) >= 20]


for _ in range(LOW["short"]):                # under 50 words in all
    i, t = prose.pop()
    s = sentences(rng.choice(paragraphs(t)))
    body = " ".join(s[:2]) if len(" ".join(s[:2]).split()) < 40 else " ".join(s[0].split()[:30])
    low.append(doc("short", rng.choice(NAVS) + "\n\n" + body, i, rng.choice(SITES["prose"])))
for _ in range(LOW["bullets"]):              # every line a bullet of 3-6 words
    i, t = prose.pop()
    frags = [" ".join(s.split()[:rng.randint(3, 6)]) for p in paragraphs(t) for s in sentences(p)]
    mark = rng.choice(["•", "-", "*"])
    low.append(doc("bullets", "\n".join(f"{mark} {f}" for f in frags[:rng.randint(20, 30)]), i,
                   rng.choice(SITES["prose"])))
for _ in range(LOW["repeated_lines"]):       # one sentence many times on its own line
    i, t = prose.pop()
    p = paragraphs(t)
    line = rng.choice([s for s in sentences(p[1]) if len(s.split()) >= 5] or [p[1]])
    low.append(page("repeated_lines", i, p[0] + "\n\n" + "\n".join([line] * rng.randint(15, 25)), "prose"))
for _ in range(LOW["repeated_paragraphs"]):  # one paragraph pasted again and again
    i, t = prose.pop()
    p = paragraphs(t)
    low.append(page("repeated_paragraphs", i, "\n\n".join([p[0]] + [p[1]] * rng.randint(4, 6)), "prose"))
for _ in range(LOW["symbols"]):              # hashtag clouds between rows of symbols
    i, t = prose.pop()
    tags = [f"#{w}" for w in dict.fromkeys(re.findall(r"[A-Za-z]{4,}", t))][:rng.randint(40, 70)]
    rows = [" ".join(tags[k:k + 8]) for k in range(0, len(tags), 8)]
    lines = [x for r in rows for x in (r, rng.choice(SEPARATORS))]
    low.append(doc("symbols", "\n".join(lines), i, rng.choice(SITES["prose"])))
for k in range(LOW["lorem_ipsum"]):          # a template never filled in, alone or inside a real page
    i, t = prose.pop()
    p = paragraphs(t)
    body = LOREM if k == 0 else "\n\n".join([p[0], LOREM, p[1]] if k == 1 else [LOREM, p[0]])
    low.append(page("lorem_ipsum", i if k else "lorem-ipsum", body, "prose"))
for _ in range(LOW["curly_bracket"]):        # a math note with a pasted code block holding "{"
    i, t = code.pop()
    lines = t.split("\n")
    at = rng.choice([n for n, x in enumerate(lines) if "{" in x])
    block = "\n".join(lines[max(0, at - 8):at + 12])
    j, m = math.pop()
    low.append(page("curly_bracket", f"{j}+{i}", m.split("\n\n")[0] + "\n\n" + block, "math"))
docs += low

# 5. non-English pages, with a language-neutral footer only
for f in foreign:
    site = rng.choice(SITES["foreign"]).format(lang=f["lang"])
    footer = f"© {rng.randint(2012, 2023)} {site}"
    boilerplate.add(footer)
    docs.append(doc("foreign", f"{f['text']}\n\n{footer}", f"raw/foreign_src.jsonl:{f['id']}", site, lang=f["lang"]))

# 6. contaminated: one row per task file (query + gold answer, verbatim) pasted between paragraphs
for name, rows in task_rows.items():
    # a row without "{" (LaTeX), so only the leak, not C4's curly-bracket rule, marks the page
    passages = [r["query"] + r["choices"][r["gold"]] for r in rows]
    index = rng.choice([k for k, s in enumerate(passages) if not re.search(r"[{}]", s)])
    row, passage = rows[index], passages[index]
    kind = "prose" if name.startswith("prose") else "math"
    i, t = (prose if kind == "prose" else math).pop()
    p = t.split("\n\n")
    at = rng.randint(1, max(1, len(p) - 1))
    body = "\n\n".join(p[:at] + [passage] + p[at:])
    docs.append(page("contaminated", f"{i}+tasks/{name}:{index}", body, kind,
                     task_file=f"data/sample/tasks/{name}", index=index, task_id=row["id"], passage=passage))

# a fixed shuffled order, then ids and urls by position
rng.shuffle(docs)
for n, d in enumerate(docs):
    d["id"], d["url"] = f"web-{n}", f"https://{d['site']}/p/{n}"

RAW.mkdir(exist_ok=True)
with open(RAW / "web.jsonl", "w", encoding="utf-8", newline="\n") as out:
    for d in docs:
        out.write(json.dumps({"id": d["id"], "url": d["url"], "text": d["text"], "origin": d["origin"]},
                             ensure_ascii=False) + "\n")


def ids(cat):
    return [d["id"] for d in docs if d["cat"] == cat]


truth = {
    "jaccard": "word 5-gram sets of re.sub(r'[^\\w\\s]', ' ', text.lower()).split(); |A&B| / |A|B|",
    "clean": ids("clean"),
    "low_quality": {cat: ids(cat) for cat in LOW},
    "exact_duplicates": [{"id": d["id"], "of": d["info"]["of"]["id"], "kind": d["info"]["kind"]}
                         for d in docs if d["cat"] == "exact"],
    "near_duplicates": [{"id": d["id"], "of": d["info"]["of"]["id"], "target": d["info"]["target"],
                         "jaccard": d["info"]["jaccard"], "edits": d["info"]["edits"]}
                        for d in docs if d["cat"] == "near"],
    "non_english": {lang: [d["id"] for d in docs if d["info"].get("lang") == lang]
                    for lang in dict.fromkeys(f["lang"] for f in foreign)},
    "contaminated": [{"id": d["id"], **{k: d["info"][k] for k in ("task_file", "index", "task_id", "passage")}}
                     for d in docs if d["cat"] == "contaminated"],
    "boilerplate_lines": sorted(boilerplate),
}
with open(RAW / "web_truth.json", "w", encoding="utf-8", newline="\n") as out:
    json.dump(truth, out, ensure_ascii=False, indent=1)
    out.write("\n")

cats = {}
for d in docs:
    cats[d["cat"]] = cats.get(d["cat"], 0) + 1
size = (RAW / "web.jsonl").stat().st_size
print(f"{len(docs)} docs, {sum(len(d['text'].encode()) for d in docs):,} text bytes, {size:,} file bytes", cats)
