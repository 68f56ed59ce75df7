"""Words as datatrove's English word tokenizer splits them, without spaCy.

datatrove 0.10 splits English with a blank spaCy "en" pipeline (tokenizer
plus sentencizer; no model, no download). The Gopher and FineWeb thresholds
were set on those counts: punctuation is its own token, "don't" is "do" "n't",
"Mr." stays whole. This re-implements that tokenizer's algorithm on its
published rules: whitespace chunks; whole-chunk special cases; prefixes and
suffixes peeled off until a special case or nothing is left; URLs kept whole;
infixes (hyphens between letters, "..." and so on) split; and special cases
re-joined where the affix rules cut them up. tests/test_curate_filters.py
compares it with datatrove when datatrove is installed.
"""

from __future__ import annotations

import re
import string
import unicodedata
from functools import lru_cache
from itertools import chain

# Sentence terminals of the living scripts (datatrove lists the whole Unicode
# Sentence_Terminal property; the rest are historic scripts). spaCy's sentencizer
# lacks three of them.
TERMINAL = frozenset(".!?‼‽⁇⁈⁉⸮⸼。｡．！？﹒﹖﹗؟۔؞।॥։።፧፨၊။។៕܀܁܂߹꓿")
_SENTENCE_END = TERMINAL - set("؞។៕")
# datatrove's punctuation: ASCII punctuation, some CJK and typographic marks
# (and, oddly, the fullwidth "１"), control characters but tab and newline.
# Its filters count these as symbols; its MinHash turns them into spaces.
PUNCTUATION = (string.punctuation + "—–“”„’´«»…、，。；：？！（）【】「」《》〈〉━∶．～％►１"
               + "".join(map(chr, [*range(9), *range(11, 32), *range(127, 160)])))
# Split off either end of a chunk (and "§ % = — –" the front, "— –" the back).
_PUNCT = frozenset("…,:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪")
_QUOTES = frozenset("'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉〈〉⟦⟧")
_CURRENCY = frozenset("$£€¥฿₽﷼" + "".join(map(chr, range(0x20A0, 0x20C0))))
_UNITS = frozenset(  # split off a number: "5km" is "5" "km"
    "km km² km³ m m² m³ dm dm² dm³ cm cm² cm³ mm mm² mm³ ha µm nm yd in ft kg g mg µg t lb oz m/s km/h kmh mph "
    "hPa Pa mbar mb MB kb KB gb GB tb TB T G M K % км км² км³ м м² м³ дм дм² дм³ см см² см³ мм мм² мм³ нм кг г мг "
    "м/с км/ч кПа Па мбар Кб КБ кб Мб МБ мб Гб ГБ гб Тб ТБ كم كم² كم³ م م² م³ سم سم² سم³ مم مم² مم³ غرام جرام جم كغ "
    "ملغ كوب اكواب".split())
_DIGITS = frozenset("0123456789")  # spaCy's rules use ASCII [0-9]
_BEFORE_PERIOD = frozenset("0123456789%²-+|") | _PUNCT | _QUOTES  # a final "." after these is split off
_HYPHENS = ("-", "–", "—", "--", "---", "——", "~")


def _icon(c: str) -> bool:
    return unicodedata.category(c) == "So"


# spaCy's letters: cased Latin, Cyrillic and Greek ranges, and scripts without case
# (which its rules count as both lower and upper case). Not every str.isalpha() letter.
_CASED = re.compile("[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01bf\u01c4-\u024f\u0250-\u02af\u1d00-\u1d25"
                    "\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1eff\u2c60-\u2c7b\u2c7e\u2c7f\ua722-\ua76f\ua771-\ua787"
                    "\ua78b-\ua78e\ua790-\ua7b9\ua7fa\uab30-\uab5a\uab60-\uab64\uff21-\uff3a\uff41-\uff5a"
                    "ёа-яЁА-ЯәөүҗңһӘӨҮҖҢҺіїєґІЇЄҐѓѕјљњќѐѝЃЅЈЉЊЌЀЍα-ωάέίόώήύΑ-ΩΆΈΊΌΏΉΎ]")
_UNCASED = re.compile("[\u0591-\u05f4\u0620-\u064a\u066e-\u06d5\u06e5-\u06ff\u0750-\u077f\u08a0-\u08bd"
                      "\u0900-\u097f\u0980-\u09ff\u0b80-\u0bff\u0c00-\u0c7f\u0c80-\u0cff\u0d80-\u0dff"
                      "\u1100-\u11ff\u1200-\u137f\u2e80-\u2fdf\u2ff0-\u303f\u3040-\u30ff\u31c0-\u31ef"
                      "\u3200-\u33ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\ufb1d-\ufb4f"
                      "\ufb50-\ufbb1\ufbd3-\ufd3d\ufd50-\ufdc7\ufdf0-\ufdfb\ufe30-\ufe4f\ufe70-\ufefc"
                      "\U0001ee00-\U0001eebb\U0001f200-\U0001f2ff\U00020000-\U0002ebef\U0002f800-\U0002fa1f]")


@lru_cache(maxsize=None)
def _case(c: str) -> str:
    """"a" for a letter, plus "l" / "u" when lower / upper case; uncased letters are both."""
    if _UNCASED.match(c):
        return "alu"
    if _CASED.match(c):
        return "a" + "l" * c.islower() + "u" * c.isupper()
    return ""


def _alpha(c: str) -> bool:
    return bool(c) and "a" in _case(c)


def _lower(c: str) -> bool:
    return bool(c) and "l" in _case(c)


def _upper(c: str) -> bool:
    return bool(c) and "u" in _case(c)


# URLs stay whole: optional scheme and user, host labels, a lower-case top-level domain, port, path.
_HOST = r"(?:(?:[A-Za-z0-9\u00a1-\uffff][A-Za-z0-9\u00a1-\uffff_-]{0,62})?[A-Za-z0-9\u00a1-\uffff]\.)+"
_LOWER = "".join(c for c in map(chr, range(0x10000)) if c.islower() and _CASED.match(c))
_TLD = f"[{_LOWER}{_UNCASED.pattern[1:-1]}]{{2,63}}"
_URL = re.compile(rf"(?:[\w+\-.]{{2,}}://)?{_HOST}{_TLD}(?::\d{{2,5}})?(?:[/?#]\S*)?")
_URL_AUTH = re.compile(  # the same with a user part; only tried on chunks with "@" (it backtracks a lot)
    rf"(?:[\w+\-.]{{2,}}://)?(?:\S+(?::\S*)?@)?{_HOST}{_TLD}(?::\d{{2,5}})?(?:[/?#]\S*)?")


def _special_cases() -> dict[str, tuple[str, ...]]:
    """The English tokenizer exceptions: contractions split, abbreviations kept whole."""
    out: dict[str, tuple[str, ...]] = {}

    def add(stems: str, *tails: str) -> None:
        for stem in stems.split():
            for s in (stem, stem.title()):
                for t in (tails, tuple(x.replace("'", "") for x in tails)):  # "don't" and "dont"
                    out[s + "".join(t)] = (s, *t)

    add("i", "'m"), add("i you we they", "'ve"), add("you we they", "'re"), add("he she it", "'s")
    for tails in [("'ll",), ("'ll", "'ve"), ("'d",), ("'d", "'ve")]:
        add("i you he she it we they who what when where why how there that this these those", *tails)
    add("who what when where why how there that this", "'s")
    add("who what when where why how there these those", "'re")
    add("who what when where why how there these those could might must should would", "'ve")
    add("ca could do does did had may might must need ought sha should wo would", "n't", "'ve")
    add("ca could do does did had may might must need ought sha should wo would ai are is was were have has "
        "dare", "n't")
    for word in "ill its hell shell shed were well whore".split():  # real words, not contractions
        out.pop(word, None), out.pop(word.title(), None)
    add("i", "'m", "a")  # "I'ma"
    for spec in "can|not gon|na got|ta let|'s c'm|on not|'ve not|ve how|'d|'y".split():
        first, *rest = spec.split("|")
        for f in (first, first.capitalize()):
            out[f + "".join(rest)] = (f, *rest)
    out["y'all"], out["yall"] = ("y'", "all"), ("y", "all")
    for word in "doin goin havin lovin nothin nuthin ol somethin".split():  # kept whole, apostrophe or not
        for f in (word, word.title()):
            out[f], out[f + "'"] = (f,), (f + "'",)
    for u in "CcFfKk":  # "°F." is "°" "F" "."
        out[f"°{u}."] = ("°", u, ".")
    for h in range(1, 13):
        for p in ("a.m.", "am", "p.m.", "pm"):
            out[f"{h}{p}"] = (str(h), p)
    whole = ("'s 'S ‘s ‘S 're 'd 'em 'll 'nuff em ll nuff 'cause 'Cause 'cos 'Cos 'coz 'Coz 'cuz 'Cuz 'bout "
             "ma'am Ma'am o'clock O'clock and/or w/o ' '' C++ \\\") \\n \\t — <space> a.m. p.m. e.g. E.g. E.G. "
             "i.e. I.e. I.E. Adm. Bros. co. Co. Corp. D.C. Dr. Gen. Gov. Inc. Jr. Ltd. Md. Messrs. Mo. Mont. "
             "Mr. Mrs. Ms. Ph.D. Prof. Rep. Rev. Sen. St. vs. v.s. Mt. Ak. Ala. Apr. Ariz. Ark. Aug. Calif. "
             "Colo. Conn. Dec. Del. Feb. Fla. Ga. Ia. Id. Ill. Ind. Jan. Jul. Jun. Kan. Kans. Ky. La. Mar. Mass. Mich. "
             "Minn. Miss. N.C. N.D. N.H. N.J. N.M. N.Y. Neb. Nebr. Nev. Nov. Oct. Okla. Ore. Pa. S.C. Sep. "
             "Sept. Tenn. Va. Wash. Wis. ä. ö. ü. " + " ".join(c + "." for c in string.ascii_lowercase))
    emoticons = (":) :-) :)) :-)) :))) :-))) (: (-: =) (= :] :-] [: [-: [= =] :o) (o: :} :-} 8) 8-) (-8 ;) "
                 ";-) (; (-; :( :-( :(( :-(( :((( :-((( ): )-: =( >:( :') :'-) :'( :'-( :/ :-/ =/ =| :| :-| ]= "
                 "=[ :1 :P :-P :p :-p :O :-O :o :-o :0 :-0 :() >:o :* :-* :3 :-3 =3 :> :-> :X :-X :x :-x :D :-D "
                 ";D ;-D =D xD XD xDD XDD 8D 8-D ^_^ ^__^ ^___^ >.< >.> <.< ._. ;_; -_- -__- v.v V.V v_v V_V "
                 "o_o o_O O_o O_O 0_o o_0 0_0 o.O O.o O.O o.o 0.0 o.0 0.o @_@ <3 <33 <333 </3 (^_^) (>_<) "
                 "(*_*) (¬_¬) (-_-) (._.) ಠ_ಠ ಠ︵ಠ (ಠ_ಠ) ¯\\(ツ)/¯ (╯°□°）╯︵┻━┻ ><(((*>")
    out.update((w, (w,)) for w in (whole + " " + emoticons).split())
    for key in [k for k in out if "'" in k]:  # the typographic apostrophe too
        out.setdefault(key.replace("'", "’"), tuple(t.replace("'", "’") for t in out[key]))
    return out


_SPECIAL = _special_cases()


def _prefix(s: str) -> int:
    c = s[0]
    if s.startswith(".."):
        return len(s) - len(s.lstrip("."))
    if s.startswith("US$"):
        return 3
    if s.startswith(("C$", "A$")):
        return 2
    if c == "+":
        return 0 if s[1:2] in _DIGITS else 1
    return int(c in "§%=—–" or c in _PUNCT or c in _QUOTES or c in _CURRENCY or _icon(c))


def _suffix(s: str) -> int:
    """Length of the longest suffix rule that matches (the leftmost match of spaCy's regex)."""
    n, c, best = len(s), s[-1], 0
    if c in _PUNCT or c in _QUOTES or c in "—–" or _icon(c):
        best = 2 if s.endswith("……") else 1
    if s.endswith(".."):
        best = max(best, n - len(s.rstrip(".")))
    if s.endswith(("'s", "'S", "’s", "’S")):
        best = max(best, 2)
    if n > 1 and c in "+.":
        p = s[-2]
        if (c == "+" and p in _DIGITS) or (c == "." and (
                p in _BEFORE_PERIOD or _lower(p) or (n > 2 and p in "FfCcKk" and s[-3] == "°")
                or (n > 2 and _upper(p) and _upper(s[-3])))):
            best = max(best, 1)
    for i in range(1, n - best):  # a unit or currency right after a digit
        if s[i - 1] in _DIGITS and (s[i:] in _UNITS or s[i:] in _CURRENCY or s[i:] in ("US$", "C$", "A$")):
            return n - i
    return best


def _infixes(s: str) -> list[tuple[int, int]]:
    found, i, n = [], 0, len(s)
    while i < n:
        c, prev, nxt = s[i], s[i - 1] if i else "", s[i + 1] if i + 1 < n else ""
        end = 0
        if s.startswith("..", i):
            end = n - len(s[i:].lstrip("."))
        elif c == "…" or _icon(c):
            end = i + 1
        elif c in "+-*^" and prev in _DIGITS and nxt and nxt in "0123456789-":
            end = i + 1
        elif c == "." and (_lower(prev) or prev in _QUOTES) and (_upper(nxt) or nxt in _QUOTES):
            end = i + 1
        elif c == "," and _alpha(prev) and _alpha(nxt):
            end = i + 1
        elif _alpha(prev) or prev in _DIGITS:
            h = next((h for h in _HYPHENS if s.startswith(h, i) and _alpha(s[i + len(h):i + len(h) + 1])), None)
            if h:
                end = i + len(h)
            elif c in ":<>=/" and _alpha(nxt):
                end = i + 1
        if end:
            found.append((i, end))
            i = end
        else:
            i += 1
    return found


def _affixes(s: str, specials: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Peel prefixes and suffixes until a special case or nothing is left, then split the middle."""
    if s in specials:
        return specials[s]
    pre: list[str] = []
    suf: list[str] = []
    last = -1
    while s and len(s) != last and s not in specials:
        last = len(s)
        p = _prefix(s)
        if p and s[p:] in specials:
            pre.append(s[:p])
            s = s[p:]
            break
        q = _suffix(s[p:]) if s[p:] else 0
        if q and s[:-q] in specials:
            suf.append(s[-q:])
            s = s[:-q]
            break
        if p:
            pre.append(s[:p])
        if q:
            suf.append(s[-q:])
        s = s[p:len(s) - q]
    mid: list[str] = []
    if s in specials:
        mid = list(specials[s])
    elif s and "." in s and (_URL_AUTH if "@" in s else _URL).fullmatch(s):
        mid = [s]
    elif s:
        start = 0
        for a, b in _infixes(s):
            if a == 0:  # an infix at the very start stays attached to what follows
                continue
            if a != start:
                mid.append(s[start:a])
            mid.append(s[a:b])
            start = b
        if s[start:]:
            mid.append(s[start:])
    return (*pre, *mid, *reversed(suf))


# Special cases that the affix rules would cut up (":)" -> ":" ")") are also
# re-joined wherever their pieces turn up side by side inside a chunk.
_PATTERNS = {_affixes(k, {}): k for k in _SPECIAL if _prefix(k) or _suffix(k) or _infixes(k)}
_LONGEST = max(map(len, _PATTERNS))


@lru_cache(maxsize=1 << 16)
def _split_chunk(chunk: str) -> tuple[str, ...]:
    tokens = _affixes(chunk, _SPECIAL)
    found = [(i, j) for i in range(len(tokens)) for j in range(i + 2, min(len(tokens), i + _LONGEST) + 1)
             if tokens[i:j] in _PATTERNS]
    if not found:
        return tokens
    found.sort(key=lambda m: (m[0] - m[1], m[0]))  # longest first, then leftmost
    seen: set[int] = set()
    keep = []
    for m in found:
        if m[0] not in seen and m[1] - 1 not in seen:
            keep.append(m)
        seen.update(range(*m))  # a match that lost still blocks the ones after it, as in spaCy
    out, pos = [], 0
    for i, j in sorted(keep):
        out += [*tokens[pos:i], *_SPECIAL[_PATTERNS[tokens[i:j]]]]
        pos = j
    return (*out, *tokens[pos:])


def split_words(text: str) -> list[str]:
    """Words and punctuation tokens, as datatrove's English word tokenizer gives them."""
    # map() over the cached splitter stays in C for every chunk seen before.
    return list(chain.from_iterable(map(_split_chunk, text.split())))


def count_sentences(text: str) -> int:
    """spaCy's sentencizer: a sentence ends at a terminal token followed by a non-punctuation token.

    Whitespace other than the single space after a word is a token there too, so it can start one.
    """
    n, seen, prev = 1, False, None
    for part in re.split(r"(\s+)", text):
        if not part:
            continue
        if part[0].isspace():
            tokens = [part[1:] if prev is not None and part[0] == " " else part]
        else:
            tokens = list(_split_chunk(part))
        for t in filter(None, tokens):
            if t in _SENTENCE_END:
                seen = True
            elif seen and not all(unicodedata.category(c).startswith("P") for c in t):
                n, seen = n + 1, False
        prev = part
    return n
