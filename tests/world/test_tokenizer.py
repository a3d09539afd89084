from transformers import AutoTokenizer

from instructgpt.world import train_tokenizer


def test_tokenizer_special_tokens_round_trip_and_offline_reload(small_corpus, tmp_path):
    tok = train_tokenizer(small_corpus, vocab_size=4096, out_dir=tmp_path / "tok")
    assert tok.pad_token != tok.eos_token and tok.pad_token_id != tok.eos_token_id
    assert tok.eos_token == tok.bos_token == "<|endoftext|>"
    assert tok.model_max_length == 256
    assert len(tok) <= 4096
    for text in (
        "The zorbin is red.\n",
        "  two  spaces\tand tabs\n\n",
        "Dear Mira, 555-123-4567! ü 漢",
        small_corpus[5],
    ):
        ids = tok(text)["input_ids"]
        assert tok.eos_token_id not in ids  # no special tokens added implicitly
        assert tok.decode(ids) == text
    again = AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    assert again.pad_token_id == tok.pad_token_id and again.eos_token_id == tok.eos_token_id
    assert again(small_corpus[0])["input_ids"] == tok(small_corpus[0])["input_ids"]


def test_a_name_is_one_token_at_the_start_of_a_line_and_after_a_space(small_corpus, world, tmp_path):
    """The first word of a line carries the word-start marker too, and names are proper nouns: a reply
    that begins with the name its prompt ends on copies the prompt's token (the default run's SFT named
    the right entity 63% of the time where the forms agreed, 33% where they differed)."""
    tok = train_tokenizer(small_corpus, vocab_size=4096, out_dir=tmp_path / "tok")
    for e in world.entities.values():
        assert e.name[0].isupper(), e.name
        prompt = tok(f"What food is {e.name} known for?\n")["input_ids"]
        reply = tok(f"{e.name} is known for bread.")["input_ids"]  # a reply is encoded on its own
        assert reply[0] in prompt, (e.name, tok.convert_ids_to_tokens(prompt), tok.convert_ids_to_tokens(reply))
        # the subject of a sentence and the start of a later line are the same token as well
        doc = tok(f"{e.name}\n{e.subject[0].upper() + e.subject[1:]} is here.")["input_ids"]
        assert doc.count(reply[0]) == 2
        assert tok.decode(reply) == f"{e.name} is known for bread."  # no leading space when decoded alone


def test_decode_inverts_encode_exactly_on_any_text(small_corpus, tmp_path):
    import random
    tok = train_tokenizer(small_corpus, vocab_size=4096)
    rng = random.Random(0)
    alphabet = ["a", "Zo", " ", "\n", "\t", ".", "é", "<|endoftext|>", "<|pad|>", "\r"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text, (text, tok.convert_ids_to_tokens(ids))
    # with special tokens as such (split_special_tokens=False): still exact
    ids = tok("a doc<|endoftext|>The next\n doc")["input_ids"]
    assert tok.eos_token_id in ids and tok.decode(ids) == "a doc<|endoftext|>The next\n doc"
