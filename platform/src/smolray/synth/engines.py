"""The two ways the synth job runs vLLM over a Ray Dataset.

backend: vllm          One `vllm.LLM` per Ray Data actor; each batch of
                       `rows_per_call` rows goes to `LLM.generate()` whole,
                       as an offline vLLM script hands over its prompts. The
                       engine schedules the batch itself, and nothing runs
                       per row between Ray and the engine.
backend: ray.data.llm  Ray's `build_processor`: batches of rows stream
                       through an async engine, each row its own request.
                       Its placement groups are what an engine spanning
                       several GPUs (tensor or pipeline parallel) needs.

Both return a function Dataset -> Dataset whose rows carry the mode's input
columns plus `generated`, `completion_tokens` and `error` (empty unless the
row failed; the job retries failed rows on its next run).
"""

from __future__ import annotations

import time

from smolray.synth.config import SynthConfig

# Input columns carried through the engine to the written rows.
CARRIED = {"generate": ["id", "topic", "seed_id", "seed", "audience", "format", "instruction", "template"],
           "annotate": ["id", "doc", "instruction", "template"]}


def processor(cfg: SynthConfig, timed: bool = False):
    """The configured backend's Dataset -> Dataset function.

    With `timed` (benchmarks), backend vllm adds each row's generate() call's
    wall-clock start and end (`gen_start`, `gen_end`).
    """
    return _vllm_actors(cfg, timed) if cfg.model.backend == "vllm" else _ray_data_llm(cfg)


def _engine_args(cfg: SynthConfig) -> dict:
    from smolray.serve.config import engine_kwargs

    m = cfg.model
    engine = engine_kwargs(m.device, m.dtype, m.max_model_len, m.kv_cache_mb)
    # vllm.LLM's own defaults, stated so both backends size the engine alike
    # (ray.data.llm would start it with the scheduler's 128 sequences).
    engine.update(max_num_seqs=m.max_num_seqs,
                  max_num_batched_tokens=m.max_num_batched_tokens or (4096 if m.device == "cpu" else 8192))
    return engine


def _engine_env() -> dict:
    """The engine actor at normal CPU priority (serve/config.ENGINE_ENV_VARS),
    so the driver writing parts and Ray's own processes do not come first.
    Ray merges a task's env_vars into the job's."""
    from smolray.serve.config import ENGINE_ENV_VARS

    return {"env_vars": dict(ENGINE_ENV_VARS)}


def _sampling(cfg: SynthConfig) -> dict:
    s = cfg.sampling
    return {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens, "min_tokens": s.min_tokens}


def prompt_ids(tok, texts: list[str], chat: bool, limit: int) -> tuple[list[list[int]], list[str]]:
    """Each text's prompt token ids (the chat template applied for chat
    models), and an error for each prompt of `limit` tokens or more ("" if none).

    One batch call to the tokenizer; finding the prompts too long for the
    engine before any reaches it matters because vLLM refuses a whole
    generate() call for one of them.
    """
    if chat:
        texts = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
                 for t in texts]
        ids = tok(texts, add_special_tokens=False)["input_ids"]
    else:
        ids = tok(texts)["input_ids"]
    # vLLM needs room for at least one generated token.
    errors = [f"the prompt is {len(x)} tokens and the engine's max_model_len {limit}: no room to generate; "
              "raise model.max_model_len or shorten the input" if len(x) >= limit else "" for x in ids]
    return ids, errors


class Generate:
    """A Ray Data actor holding one vllm.LLM; each call generates for a whole batch."""

    def __init__(self, source: str, engine: dict, sampling: dict, chat: bool, carried: list[str], timed: bool):
        from vllm import LLM, SamplingParams

        self.llm = LLM(model=source, **engine)
        self.params = SamplingParams(**sampling)
        self.tok = self.llm.get_tokenizer()
        self.limit = self.llm.llm_engine.model_config.max_model_len
        self.chat, self.carried, self.timed = chat, carried, timed

    def __call__(self, batch):
        import pyarrow as pa

        rows = batch.to_pylist()
        ids, errors = prompt_ids(self.tok, [r["instruction"] for r in rows], self.chat, self.limit)
        out = [{k: r[k] for k in self.carried} | {"generated": "", "completion_tokens": 0, "error": e}
               for r, e in zip(rows, errors)]
        fits = [i for i, e in enumerate(errors) if not e]
        start = time.time()
        prompts = [{"prompt_token_ids": ids[i]} for i in fits]
        done = self.llm.generate(prompts, self.params, use_tqdm=False) if prompts else []
        end = time.time()
        for i, res in zip(fits, done):
            out[i]["generated"] = res.outputs[0].text
            out[i]["completion_tokens"] = len(res.outputs[0].token_ids)
        if self.timed:
            for r in out:
                r.update(gen_start=start, gen_end=end)
        return pa.Table.from_pylist(out)


def _vllm_actors(cfg: SynthConfig, timed: bool):
    from smolray.cluster import role_resources

    m = cfg.model
    # An engine books a core on CPU (it runs one OpenMP thread there) or a
    # GPU, on a node of the configured role.
    place = {"num_cpus": 1} if m.device == "cpu" else {"num_cpus": 1, "num_gpus": 1}
    place["runtime_env"] = _engine_env()
    if m.node_role:
        place["resources"] = role_resources(m.node_role)
    kwargs = {"source": m.source, "engine": _engine_args(cfg), "sampling": _sampling(cfg), "chat": m.chat,
              "carried": CARRIED[cfg.mode], "timed": timed}

    def apply(ds):
        from ray.data import ActorPoolStrategy

        return ds.map_batches(Generate, fn_constructor_kwargs=kwargs, batch_size=m.rows_per_call,
                              batch_format="pyarrow", compute=ActorPoolStrategy(size=m.concurrency), **place)

    return apply


def _ray_data_llm(cfg: SynthConfig):
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from smolray.serve.config import engine_bundles

    m = cfg.model
    # On CPU the engine stage books one core instead of Ray Data's default GPU.
    bundles = engine_bundles(m.device, 1, m.node_role)
    extra = {"placement_group_config": bundles} if bundles else {}
    config = vLLMEngineProcessorConfig(
        model_source=m.source, engine_kwargs=_engine_args(cfg), batch_size=m.rows_per_call,
        concurrency=m.concurrency, max_concurrent_batches=m.in_flight,
        chat_template_stage={"enabled": m.chat},
        # vLLM tokenizes the prompt and decodes the output inside the engine,
        # as vllm.LLM does: separate stages would be two more actors per row
        # competing for the cores the engine leaves free.
        tokenize_stage=False, detokenize_stage=False, log_engine_metrics=False,
        should_continue_on_error=True, runtime_env=_engine_env(), **extra)
    # stream_interval: one output object per request at its end instead of one
    # per generated token (vllm.LLM asks for final outputs only).
    params = {**_sampling(cfg), "stream_interval": cfg.sampling.max_tokens}

    def pre(row):
        # `instruction` survives the stages; the engine consumes `prompt`.
        text = row["instruction"]
        asked = {"messages": [{"role": "user", "content": text}]} if m.chat else {"prompt": text}
        return {**row, **asked, "sampling_params": params}

    def post(row):
        keep = {k: row[k] for k in CARRIED[cfg.mode]}
        keep["generated"] = row.get("generated_text") or ""
        keep["error"] = row.get("__inference_error__") or ""
        keep["completion_tokens"] = int(row.get("num_generated_tokens") or 0)
        return keep

    return build_processor(config, preprocess=pre, postprocess=post)
