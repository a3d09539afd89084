"""Policies of a run folder: discovery, encoding, seeded sampling, log-probs, KL and reward scores."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from instructgpt.config import ConfigError
from instructgpt.evaluation.config import EvalConfig
from instructgpt.evaluation.inputs import few_shot_demos, load_test_prompts
from instructgpt.evaluation.policies import ModelPool, PolicyRunner, discover_models, generate_responses
from instructgpt.evaluation.run import run_eval
from instructgpt.evaluation.scoring import continuation_logprobs, policy_kl, reward_scores, shared_context_logprobs

from tests.conftest import make_model

from .fake_run import eval_config


def test_discover_models_and_config(run, tmp_path):
    run_dir, _ = run
    specs = discover_models(run_dir, ["ppo_ptx-extra=" + str(run_dir / "models" / "ppo")], few_shot=3)
    assert list(specs) == ["base", "base_prompted", "sft", "ppo", "ppo_ptx", "ppo_ptx-extra"]
    assert specs["base_prompted"].prompted and specs["base_prompted"].path == specs["base"].path
    assert specs["ppo_ptx-extra"].kind == "ppo_ptx"
    assert "rm" not in specs
    assert "base_prompted" not in discover_models(run_dir, few_shot=0)
    # a run started with --base-model has no models/base: run_config.json names the base
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "sft").symlink_to(run_dir / "models" / "sft", target_is_directory=True)
    (tmp_path / "run_config.json").write_text(json.dumps({"base_model": str(run_dir / "models" / "base")}))
    external = discover_models(tmp_path, few_shot=1)
    assert list(external) == ["base", "base_prompted", "sft"]
    assert external["base"].path == str(run_dir / "models" / "base") and external["base"].n_params
    with pytest.raises(ConfigError, match="kind"):
        discover_models(run_dir, ["mystery=" + str(run_dir / "models" / "ppo")])
    with pytest.raises(ConfigError):
        EvalConfig(run_dir="").validate()
    with pytest.raises(ConfigError, match="name=path"):
        EvalConfig(run_dir="x", models=["nopath"]).validate()
    with pytest.raises(ConfigError, match="baseline"):
        run_eval(eval_config(run_dir, baseline="nope", out_dir=str(tmp_path)))


def test_generation_is_seeded_and_prefix_is_used(run):
    run_dir, data = run
    cfg = eval_config(run_dir)
    specs = discover_models(run_dir, few_shot=2)
    pool = ModelPool(torch.device("cpu"))
    demos = few_shot_demos(data, 2, seed=0)
    assert len(demos) == 2
    prompts = load_test_prompts(run_dir, 10)
    a = generate_responses(specs["sft"], prompts, cfg, PolicyRunner(specs["sft"], cfg, pool))
    b = generate_responses(specs["sft"], prompts, cfg)
    assert list(a) == list(b) and all(r.ids for r in a)
    plain = PolicyRunner(specs["base"], cfg, pool, demos)
    prompted = PolicyRunner(specs["base_prompted"], cfg, pool, demos)
    assert plain.model is prompted.model  # loaded once
    assert specs["base"].n_params == sum(p.numel() for p in plain.model.parameters())
    text = prompts[0].text
    assert len(prompted.prompt_ids(text)) > len(plain.prompt_ids(text))
    assert prompted.prompt_ids(text)[-len(plain.prompt_ids(text)):] == plain.prompt_ids(text)
    assert prompted.prompt_ids(text, with_prefix=False) == plain.prompt_ids(text)


def test_continuation_logprobs_match_a_direct_forward(run):
    run_dir, _ = run
    cfg = eval_config(run_dir)
    spec = discover_models(run_dir)["sft"]
    runner = PolicyRunner(spec, cfg, ModelPool(torch.device("cpu")))
    ctx, cont = runner.encode("The cat"), runner.encode(" sat down.", special=False)
    other = runner.encode("A much longer context, so that the batch needs padding here")
    lps = continuation_logprobs(runner.model, [ctx, other], [cont, cont], runner.pad, max_rows=2)
    with torch.no_grad():
        ids = torch.tensor([ctx + cont])
        logp = torch.log_softmax(runner.model(input_ids=ids).logits[0, :-1], -1)
        direct = logp[torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1), torch.tensor(cont)]
    assert np.allclose(lps[0], direct.numpy(), atol=1e-5)
    assert lps[1].shape == (len(cont),)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_candidates_sharing_a_context_score_as_they_do_each_alone(tmp_path, arch):
    """shared_context_logprobs (the context once, its cache copied to each candidate) gives what
    continuation_logprobs gives pair by pair: uneven groups, contexts of 1 to 29 tokens, empty
    candidates, a temperature, batches split by max_rows."""
    from instructgpt.models import load_policy

    folder = make_model(tmp_path / arch, arch)
    model = load_policy(folder).eval()
    rng = np.random.default_rng(0)
    contexts, candidates = [], []
    for size in (1, 4, 2, 3, 1, 4, 2):
        context = rng.integers(3, 150, rng.integers(1, 30)).tolist()
        for _ in range(size):
            contexts.append(context)
            candidates.append(rng.integers(3, 150, rng.integers(0, 9)).tolist())
    fed = []                                    # token positions of every forward pass
    model.register_forward_pre_hook(lambda _, args, kw: fed.append(kw["input_ids"].numel()), with_kwargs=True)
    alone = continuation_logprobs(model, contexts, candidates, 1, 0.7, max_rows=5)
    fed_alone, fed[:] = sum(fed), []
    shared = shared_context_logprobs(model, contexts, candidates, 1, 0.7, max_rows=5)
    assert sum(fed) < 0.8 * fed_alone          # each context ran once
    assert [a.shape for a in alone] == [s.shape for s in shared] == [(len(c),) for c in candidates]
    assert max(float(np.abs(a - s).max(initial=0)) for a, s in zip(alone, shared)) < 1e-5


def test_kl_is_zero_against_itself_and_reward_scores_are_per_sequence(run):
    run_dir, _ = run
    cfg = eval_config(run_dir)
    specs = discover_models(run_dir)
    pool = ModelPool(torch.device("cpu"))
    prompts = load_test_prompts(run_dir, 6)
    sft = PolicyRunner(specs["sft"], cfg, pool)
    ppo = PolicyRunner(specs["ppo"], cfg, pool)
    resp = ppo.sample(prompts)
    assert policy_kl(sft, sft, prompts, resp, 0.7) == pytest.approx([0.0] * 6, abs=1e-5)
    kl = policy_kl(ppo, sft, prompts, resp, 0.7)
    assert len(kl) == 6 and all(math.isfinite(x) for x in kl)
    from instructgpt.reward_model import RewardModel
    rm = RewardModel.from_pretrained(run_dir / "models" / "rm").eval()
    seqs = [sft.prompt_ids(p) + sft.response_ids(p, r) for p, r in zip(prompts, resp)]
    batched = reward_scores(rm, seqs, sft.pad, batch_size=4)
    single = [reward_scores(rm, [s], sft.pad)[0] for s in seqs]
    assert batched == pytest.approx(single, abs=1e-4)


def test_prompted_base_reads_its_examples_as_one_document_and_answers_on_a_line(run):
    """Issue 13: few-shot examples separated by EOS (the base's end of a document) told the base nothing;
    a plain-text prompted base now sees them on lines of one document and answers up to a newline."""
    run_dir, data = run
    cfg = eval_config(run_dir)
    specs = discover_models(run_dir, few_shot=2)
    pool = ModelPool(torch.device("cpu"))
    demos = few_shot_demos(data, 2, seed=0)
    prompted = PolicyRunner(specs["base_prompted"], cfg, pool, demos)
    plain = PolicyRunner(specs["base"], cfg, pool, demos)
    eos = prompted.fmt.end_id
    text = load_test_prompts(run_dir, 10)[0].text
    prefix = prompted.prompt_ids(text)[:-len(plain.prompt_ids(text))]
    assert eos not in prefix and prefix, "no EOS between few-shot examples"
    assert "\n" in prompted.tokenizer.decode(prefix) and demos[0][1] in prompted.tokenizer.decode(prefix)
    assert prompted.line_answers and len(prompted.stop_ids) > len(plain.fmt.stop_ids)
    answers = prompted.sample(load_test_prompts(run_dir, 10))
    assert all("\n" not in a for a in answers)
    assert plain.stop_ids == list(plain.fmt.stop_ids)  # the unprompted base is asked as before


def test_a_prompted_base_whose_tokenizer_adds_bos_reads_one_bos_at_the_documents_start(tmp_path):
    """A base whose tokenizer puts BOS before every text (Llama, Mistral) read BOS before every few-shot
    demonstration and before the question: a new document (what BOS marks in pretraining) each time, in the
    one document the prompted base is meant to read."""
    from tokenizers import processors

    from instructgpt.evaluation.policies import ModelSpec
    from tests.conftest import make_tokenizer
    tok = make_tokenizer(tmp_path / "tok")
    tok.add_special_tokens({"bos_token": "<s>"})
    bos = tok.convert_tokens_to_ids("<s>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    folder = make_model(tmp_path / "base", "llama", tokenizer=tok)
    tok.save_pretrained(str(folder))
    pool, cfg = ModelPool(torch.device("cpu")), EvalConfig(max_new_tokens=8, device="cpu", seed=0)
    demos = [("say red", "red"), ("say blue", "blue")]
    prompted = PolicyRunner(ModelSpec("base_prompted", "base_prompted", str(folder), prompted=True), cfg, pool, demos)
    plain = PolicyRunner(ModelSpec("base", "base", str(folder)), cfg, pool)
    ids = prompted.prompt_ids("say green")
    assert ids.count(bos) == 1 and ids[0] == bos
    assert tok.decode(ids[1:]) == "say red\nred\nsay blue\nblue\nsay green\n"
    assert plain.prompt_ids("say green")[0] == bos  # the unprompted base keeps its BOS


def test_a_lora_adapter_folder_counts_its_base_models_parameters(tmp_path):
    """The report's size of a LoRA adapter is the merged model's (its base's), not the adapter's few weights."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from instructgpt.evaluation.policies import count_params_on_disk
    base = make_model(tmp_path / "base", "gpt2")
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                             LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    adapter.save_pretrained(str(tmp_path / "adapter"))
    config = tmp_path / "adapter" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": str(base)}))
    n_base = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(base)).parameters())
    assert count_params_on_disk(base) == n_base
    assert count_params_on_disk(tmp_path / "adapter") == n_base


def test_an_answer_depends_on_its_prompt_and_seed_not_on_the_batching_or_the_other_prompts(run):
    # Before, one random stream ran through the batch: eval batch_size, eval_prompts or the test
    # set's order changed every model's answers.
    from dataclasses import replace
    run_dir, _ = run
    cfg = eval_config(run_dir)
    specs = discover_models(run_dir, few_shot=0)
    runner = PolicyRunner(specs["sft"], cfg, ModelPool(torch.device("cpu")))
    prompts = load_test_prompts(run_dir, 12)
    whole = [str(r) for r in runner.sample(prompts, cfg)]
    small_batches = [str(r) for r in runner.sample(prompts, replace(cfg, batch_size=5))]
    reversed_half = [str(r) for r in runner.sample(prompts[6:][::-1], cfg)][::-1]
    assert whole == small_batches and whole[6:] == reversed_half
    assert [str(r) for r in runner.sample(prompts, replace(cfg, seed=cfg.seed + 1))] != whole
