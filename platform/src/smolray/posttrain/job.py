"""Driver side of SFT and DPO: check, prepare the data, fit, export, report.

jobs/sft.py and jobs/dpo.py are this module with a recipe type. Rerunning
the same command reuses the prepared data (if nothing it depends on
changed) and resumes from the latest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

from smolray.cli import recipe_parser
from smolray.posttrain.prepare import EXAMPLES, PreparedDataError, Stats, prepare, read_meta, write_meta
from smolray.recipe import RecipeError, load_recipe
from smolray.recipe.post import DPORecipe, PostRecipe
from smolray.redact import redact, redact_obj
from smolray.tokenizer.bpe import CHAT_TEMPLATE

log = logging.getLogger(__name__)


def parser(doc: str):
    p = recipe_parser(doc)
    p.add_argument("--dry-run", action="store_true",
                   help="print the config, dataset statistics and steps; train nothing")
    p.add_argument("--stop-at-step", type=int, help="checkpoint and stop after this step")
    p.add_argument("--force-prepare", action="store_true", help="prepare the data again")
    p.add_argument("--prompt", default="What is a function?", help="question for the closing chat sample")
    return p


def resolve_init(recipe: PostRecipe, out: str) -> str:
    """A Hugging Face folder with the starting weights (exporting a smolray checkpoint)."""
    p = recipe.init
    fix = ("give a Hugging Face Llama folder (config.json and weights; a smolray export such as "
           "outputs/tiny/export is one) or a smolray pretraining checkpoint directory")
    if not os.path.isdir(p):
        raise RecipeError(f"init={p}: no such directory; {fix}")
    if os.path.isfile(os.path.join(p, "config.json")):
        with open(os.path.join(p, "config.json")) as f:
            kind = json.load(f).get("model_type")
        if kind != "llama":
            raise RecipeError(f"init={p}: a {kind!r} model; smolray post-trains Llama-architecture "
                              "checkpoints (config.json model_type 'llama')")
        return os.path.abspath(p)  # workers run in other directories
    if not os.path.isfile(os.path.join(p, "trainer_state.json")):
        raise RecipeError(f"init={p}: neither a model folder nor a checkpoint; {fix}")
    if not os.path.isfile(os.path.join(p, "recipe.json")):
        raise RecipeError(f"init={p}: this checkpoint predates recipe.json; export it with "
                          "jobs/pretrain.py and set init to the export folder")
    from smolray.recipe import Recipe
    from smolray.train.export import export_hf

    with open(os.path.join(p, "recipe.json")) as f:
        raw = json.load(f)
    if "objective" in raw:
        raise RecipeError(f"init={p}: a post-training checkpoint; set init to that run's export "
                          f"folder ({raw['run']['output_dir']}/export)")
    dest = os.path.join(out, "init")
    marker = os.path.join(dest, "smolray-source.txt")
    if not (os.path.isfile(marker) and open(marker).read() == os.path.abspath(p)):
        log.info("exporting the checkpoint %s to %s", p, dest)
        export_hf(p, Recipe.model_validate(raw), dest)
        with open(marker, "w") as f:
            f.write(os.path.abspath(p))
    return dest


def chat_template(recipe: PostRecipe, tok) -> str:
    t = recipe.chat_template
    if t == "chatml":
        return CHAT_TEMPLATE
    if t:
        return t
    if isinstance(tok.chat_template, str) and tok.chat_template:
        return tok.chat_template
    raise RecipeError(f"chat_template: the tokenizer {tok.name_or_path} has no chat template; set "
                      "chat_template: chatml (smolray's ChatML) or give a Jinja template")


def prepared_dir(recipe: PostRecipe, out: str) -> str:
    return os.path.abspath(recipe.data.prepared_dir or os.path.join(out, "data"))


def _weights_id(model_dir: str) -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(model_dir)):
        if name.endswith((".safetensors", ".bin")):
            with open(os.path.join(model_dir, name), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def data_key(recipe: PostRecipe, tok_path: str, template: str, init: str) -> dict:
    """Everything the prepared rows depend on: change any, and they are rebuilt."""
    from smolray.data.raw import expand, identities
    from smolray.tokenizer import fingerprint

    d = recipe.data
    key = {"objective": recipe.objective, "data": d.model_dump(exclude={"prepared_dir"}),
           "tokenizer": fingerprint(tok_path),
           "template": hashlib.sha256(template.encode()).hexdigest()[:16],
           "files": identities(expand(d.dataset.files, "data.dataset.files")) if d.dataset.files else None}
    if isinstance(recipe, DPORecipe):
        key["reference"] = _weights_id(init)  # the reference log-probs come from init
    # meta.json keeps the key: no credentials in it (they are not part of what the rows are).
    return redact_obj(key)


def ensure_prepared(recipe: PostRecipe, tok_path: str, template: str, init: str, out: str,
                    force: bool = False) -> dict:
    """The prepared data's meta.json content, preparing it first if needed."""
    directory = prepared_dir(recipe, out)
    key = data_key(recipe, tok_path, template, init)
    meta = read_meta(directory)
    if meta and meta["key"] == key and not force and os.path.isfile(os.path.join(directory, EXAMPLES)):
        log.info("prepared data in %s is up to date (%d rows)", directory, meta["stats"]["rows"])
        return meta
    stats, fp = prepare(recipe, tok_path, template, directory)
    if isinstance(recipe, DPORecipe):
        from smolray.posttrain.reference import score_pairs, write_reference

        chosen, rejected = score_pairs(init, directory, actors=_actors(recipe))
        write_reference(directory, chosen, rejected)
        fp = hashlib.sha256((fp + key["reference"]).encode()).hexdigest()[:16]
    write_meta(directory, key, stats, fp)
    return read_meta(directory)


def _actors(recipe: PostRecipe) -> int:
    """Scoring actors: as many as the run has workers (the cluster will run them)."""
    return recipe.train.num_workers


def describe(recipe: PostRecipe, init: str, tok_path: str, stats: Stats, template_from: str) -> str:
    import yaml

    from smolray.posttrain.loop import schedule

    sched = schedule(recipe, stats.rows)
    unit = "pairs" if recipe.objective == "dpo" else "sequences"
    out = [f"# {recipe.objective.upper()} recipe {recipe.name} (resolved)",
           yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False).rstrip(),
           "", f"init: {init}", f"tokenizer: {tok_path}; chat template: {template_from}", "",
           "# dataset",
           f"examples read: {stats.read:,}; kept {stats.kept:,}; truncated {stats.truncated:,}",
           "skipped: " + (", ".join(f"{k} {v:,}" for k, v in stats.skipped.items()) or "none"),
           f"{unit}: {stats.rows:,} of {recipe.data.seq_len} tokens "
           f"({'packed' if recipe.objective == 'sft' and recipe.data.packing else 'padded'}; "
           f"{stats.fill:.1%} of slots hold tokens)",
           f"tokens: {stats.tokens:,}; trained on (loss): {stats.trained_tokens:,}; "
           f"longest example: {stats.max_len:,}", "",
           "# schedule",
           f"steps: {sched.total:,} ({recipe.train.epochs} epochs x {stats.rows:,} {unit} / "
           f"global batch {recipe.train.global_batch_size}); grad accumulation {recipe.grad_accum}"]
    out += [f"{name:>15}: step {step:>8,}  lr {lr:.3e}" for name, step, lr in sched.key_points()]
    return "\n".join(out)


def check_stats(meta: dict) -> Stats:
    s = Stats(**meta["stats"])
    if not s.rows:
        raise PreparedDataError("the prepared dataset is empty")
    return s


def run_job(cls: type[PostRecipe], args) -> None:
    """The whole job: the steps below run top to bottom; see jobs/sft.py."""
    from smolray.cluster import connect
    from smolray.tokenizer import load_tokenizer
    from smolray.train.trainer import log_dir, output_dir

    # 1. Recipe, starting weights, tokenizer and chat template: all checked
    #    before any cluster work.
    import time

    t0 = time.perf_counter()
    seconds = {}  # wall time of each phase, for the summary
    recipe = load_recipe(args.config, args.set, cls)
    out = output_dir(recipe)
    init = resolve_init(recipe, out)
    tok_path = recipe.tokenizer or init
    if os.path.isdir(tok_path):
        tok_path = os.path.abspath(tok_path)
    tok = load_tokenizer(tok_path)
    template = chat_template(recipe, tok)
    template_from = "recipe" if recipe.chat_template else f"tokenizer ({tok_path})"
    connect()
    seconds["start"] = time.perf_counter() - t0

    # 2. Data: render, mask, pack (SFT) or score with the reference (DPO).
    if args.dry_run:
        stats, _ = prepare(recipe, tok_path, template, None)
        print(redact(describe(recipe, init, tok_path, stats, template_from)))
        return
    meta = ensure_prepared(recipe, tok_path, template, init, out, args.force_prepare)
    stats = check_stats(meta)
    seconds["prepare"] = time.perf_counter() - t0 - sum(seconds.values())

    # 3. Train (or resume) on the pretraining engine.
    from smolray.posttrain.loop import PostLoopConfig, post_loop, schedule
    from smolray.train.recovery import changed_data, latest_registered, read_state
    from smolray.train.trainer import fit, torch_trainer

    cfg = PostLoopConfig(recipe=recipe, data_dir=prepared_dir(recipe, out), fingerprint=meta["fingerprint"],
                         init_dir=init, log_dir=log_dir(recipe), stop_at_step=args.stop_at_step)
    last = latest_registered(out, recipe.name)  # refused here, not retried by every restart
    if last and (saved := read_state(last.path)["stage_fingerprints"]) != [meta["fingerprint"]]:
        raise changed_data(last.path, saved, meta["fingerprint"])
    result = fit(torch_trainer(post_loop, cfg, recipe), recipe)
    seconds["train"] = time.perf_counter() - t0 - sum(seconds.values())
    total, step = schedule(recipe, stats.rows).total, result.metrics["step"]
    if step < total:
        print(f"stopped at step {step} of {total}; checkpoint {result.checkpoint.path}. "
              "Run the same command again to continue.")
        return

    # 4. Export a chat model (template included) and report.
    from smolray.posttrain.export import export_chat_model

    tok.chat_template = template
    export = out.rstrip("/") + "/export"
    with result.checkpoint.as_directory() as ckpt:
        local = export_chat_model(ckpt, recipe, init, tok, export)
        if "://" in export:
            local = export_chat_model(ckpt, recipe, init, tok, log_dir(recipe) + "/export")
    summary = {"recipe": recipe.name, "objective": recipe.objective, "steps": total,
               "checkpoint": result.checkpoint.path, "export": export,
               "final": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
               "data": meta["stats"], "prompt": args.prompt, "reply": chat_reply(local, args.prompt)}
    if isinstance(recipe, DPORecipe):
        summary["reward_accuracy_all_pairs"] = reward_accuracy(recipe, local, prepared_dir(recipe, out))
    summary["seconds"] = {**seconds, "export_and_report": time.perf_counter() - t0 - sum(seconds.values())}
    os.makedirs(log_dir(recipe), exist_ok=True)
    with open(os.path.join(log_dir(recipe), "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(redact(json.dumps(summary, indent=2)))


def chat_reply(model_dir: str, prompt: str, max_new_tokens: int = 48) -> str:
    """A greedy answer from the exported model, through its own chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        new = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)[0, ids.shape[1]:]
    return tok.decode(new, skip_special_tokens=True)


def reward_accuracy(recipe: DPORecipe, model_dir: str, data_dir: str) -> float:
    """Share of all pairs where the trained model's implicit reward prefers `chosen`."""
    from smolray.posttrain.objective import Rows
    from smolray.posttrain.reference import score_pairs

    chosen, rejected = score_pairs(model_dir, data_dir, actors=_actors(recipe))
    ref = Rows(data_dir).ref
    margin = (chosen - ref.column("ref_chosen").to_numpy()) - (rejected - ref.column("ref_rejected").to_numpy())
    return float((margin > 0).mean())
