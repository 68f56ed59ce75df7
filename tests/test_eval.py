"""Evaluation: cloze multiple-choice scoring, held-out loss and bits per byte, jobs/eval.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, SAMPLE


@pytest.fixture(scope="module")
def model(init_model):
    from smolray.eval.suite import _load

    return _load(init_model)


def test_continuation_scores_match_a_direct_computation_and_ignore_batching(model):
    from smolray.eval.multiple_choice import continuation_logprobs

    m, tok = model
    pairs = [("The cat sat on the", " mat."), ("def f(x):", " return x"), ("A", " much longer answer here")]
    batched = continuation_logprobs(m, tok, pairs, batch_size=8)  # padded together
    alone = continuation_logprobs(m, tok, pairs, batch_size=1)
    np.testing.assert_allclose(batched, alone, atol=1e-4)
    ctx, cont = pairs[0]
    c, x = tok(ctx)["input_ids"], tok(cont)["input_ids"]
    ids = torch.tensor([c + x])
    with torch.no_grad():
        logp = F.log_softmax(m(input_ids=ids).logits.float(), -1)[0]
    want = sum(logp[len(c) + i - 1, t].item() for i, t in enumerate(x))
    assert batched[0] == pytest.approx(want, abs=1e-4)


def test_acc_and_length_normalised_acc_follow_the_scores(model, tmp_path):
    from smolray.eval.multiple_choice import continuation_logprobs, evaluate, load_task

    m, tok = model
    name, examples = load_task(str(SAMPLE / "tasks" / "prose_cloze.jsonl"), limit=12)
    assert name == "prose_cloze" and len(examples) == 12
    res = evaluate(m, tok, examples)
    acc = acc_norm = 0
    for ex in examples:
        s = continuation_logprobs(m, tok, list(ex.pairs))
        chars = np.array([len(cont) for _, cont in ex.pairs])
        acc += int(np.argmax(s) == ex.gold)
        acc_norm += int(np.argmax(s / chars) == ex.gold)
    assert res["acc"] == acc / 12 and res["acc_norm"] == acc_norm / 12 and res["examples"] == 12


def test_hub_rows_become_cloze_pairs():
    from smolray.eval.multiple_choice import hub_example

    arc = {"question": "Which is a gas?", "choices": {"label": ["A", "B", "C"], "text": ["ice", "steam", "rock"]},
           "answerKey": "B"}
    ex = hub_example("arc_easy", arc, 0)
    assert ex.pairs[1] == ("Question: Which is a gas?\nAnswer:", " steam") and ex.gold == 1
    hs = {"activity_label": "Cooking", "ctx_a": "He cracks an egg.", "ctx_b": "then he",
          "endings": ["fries it.", "sings."], "label": "0"}
    ex = hub_example("hellaswag", hs, 3)
    assert ex.pairs[0] == ("Cooking: He cracks an egg. Then he", " fries it.") and ex.gold == 0
    wg = {"sentence": "The cup did not fit in the box because _ was too big.", "option1": "the cup",
          "option2": "the box", "answer": "1"}
    ex = hub_example("winogrande", wg, 0)
    # The option fills the blank in the context; the rest of the sentence is scored.
    assert ex.pairs == (("The cup did not fit in the box because the cup", " was too big."),
                        ("The cup did not fit in the box because the box", " was too big."))
    assert ex.gold == 0
    mmlu = {"question": "2+2?", "choices": ["3", "4"], "answer": 1}
    assert hub_example("mmlu", mmlu, 0).pairs[1] == ("Question: 2+2?\nAnswer:", " 4")


def test_bad_task_files_name_the_line_and_the_fix(tmp_path):
    from smolray.eval import TaskError
    from smolray.eval.multiple_choice import load_task

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "choices": [" a", " b"], "gold": 0}) + "\n"
                   + json.dumps({"query": "q", "choices": [" a"], "gold": 0}) + "\n")
    with pytest.raises(TaskError, match=r"bad.jsonl:2: needs at least 2 choices"):
        load_task(str(bad))
    bad.write_text('{"query": "q", "choices": [" a", " b"]}\n')
    with pytest.raises(TaskError, match=r"bad.jsonl:1: a row needs query .* gold"):
        load_task(str(bad))
    with pytest.raises(TaskError, match="unknown hub task; known: arc_challenge"):
        load_task("hf:nope")


def test_held_out_loss_and_bits_per_byte(model):
    from smolray.eval.loss import mixture_loss, text_loss

    m, tok = model
    texts = ["Emma Woodhouse, handsome, clever, and rich, had lived nearly twenty-one years. " * 8] * 3
    res = text_loss(m, tok, texts, seq_len=64)
    ids = []
    for t in texts:
        ids += tok(t)["input_ids"] + [tok.eos_token_id]
    n = len(ids) // 65
    x = torch.tensor(ids[:n * 65]).view(n, 65)
    with torch.no_grad():
        want = F.cross_entropy(m(input_ids=x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten()).item()
    assert res["loss"] == pytest.approx(want, rel=1e-4) and res["tokens"] == n * 64
    n_bytes = sum(len(t.encode()) + 1 for t in texts) * n * 65 / len(ids)
    assert res["bpb"] == pytest.approx(want * n * 64 / (math.log(2) * n_bytes), rel=1e-6)
    mix = mixture_loss({"a": {"loss": 1.0, "bpb": 2.0}, "b": {"loss": 3.0, "bpb": 4.0}}, {"a": 7, "b": 3})
    assert mix == pytest.approx({"loss": 1.6, "bpb": 2.6})


def test_eval_job_through_ray_job_submit(head, init_model, tmp_path):
    out = tmp_path / "results.json"
    tasks = sorted(str(p.relative_to(ROOT)) for p in (SAMPLE / "tasks").glob("*.jsonl"))
    res = head.submit(["python", "jobs/eval.py", "--model", init_model, "--tasks", *tasks, "--limit", "20",
                       "--heldout", "prose=data/sample/prose.jsonl", "--heldout", "code=data/sample/code.jsonl",
                       "--target", "prose=0.3,code=0.7", "--seq-len", "128", "--max-tokens", "20000",
                       "--out", str(out)],
                      working_dir=str(ROOT), timeout=600, capture=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = json.loads(out.read_text())
    assert set(got["tasks"]) == {"prose_cloze", "code_cloze", "math_cloze"}
    # The job's scores are the library's, on the same model and the same 20 examples.
    from smolray.eval.multiple_choice import evaluate, load_task
    from smolray.eval.suite import _load

    lm, tok = _load(init_model)
    for name, m in got["tasks"].items():
        want = evaluate(lm, tok, load_task(str(SAMPLE / "tasks" / f"{name}.jsonl"), limit=20)[1])
        assert m["examples"] == 20 and (m["acc"], m["acc_norm"]) == (want["acc"], want["acc_norm"])
    prose, code = got["heldout"]["prose"], got["heldout"]["code"]
    # A random model over a 1024-token vocabulary: about ln(1024) = 6.9 nats per token.
    assert 5.5 < prose["loss"] < 8.5 and prose["bpb"] > 0
    assert got["target"]["loss"] == pytest.approx(0.3 * prose["loss"] + 0.7 * code["loss"])
    assert "target mixture" in res.stdout
