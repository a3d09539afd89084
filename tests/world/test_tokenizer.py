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
