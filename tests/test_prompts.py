from fedtune.common.data import Example, PromptEncoder


def test_target_is_completion_plus_end_of_turn_and_prompt_ends_with_assistant_header(smol_tokenizer):
    enc = PromptEncoder(smol_tokenizer, 256)
    ex = Example(({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}), "Paris")
    e = enc.encode(ex)
    assert list(e.target_ids) == smol_tokenizer("Paris", add_special_tokens=False)["input_ids"] + [smol_tokenizer.eos_token_id]
    assert smol_tokenizer.decode(e.prompt_ids).endswith("<|im_start|>assistant\n")
    assert not e.truncated


def test_long_prompts_are_truncated_from_the_left_keeping_the_target(smol_tokenizer):
    enc = PromptEncoder(smol_tokenizer, 32)
    e = enc.encode(Example(({"role": "user", "content": "word " * 200},), "yes"))
    assert e.truncated and len(e.prompt_ids) + len(e.target_ids) == 32
    assert smol_tokenizer.decode(e.prompt_ids).endswith("assistant\n")


def test_collate_left_pads_and_masks_only_targets(smol_tokenizer):
    enc = PromptEncoder(smol_tokenizer, 256)
    items = enc.encode_all([
        Example(({"role": "user", "content": "a"},), "one two three"),
        Example(({"role": "user", "content": "a much longer question here"},), "x"),
    ])
    b = enc.collate(items)
    L = b.input_ids.shape[1]
    for i, e in enumerate(items):
        n = len(e.prompt_ids) + len(e.target_ids)
        assert b.attention_mask[i].sum() == n and b.attention_mask[i, L - n:].all()
        assert b.input_ids[i, L - n:].tolist() == list(e.prompt_ids) + list(e.target_ids)
        assert b.target_mask[i].sum() == len(e.target_ids) and b.target_mask[i, -len(e.target_ids):].all()
        assert b.position_ids[i, L - n:].tolist() == list(range(n))
    assert b.max_target == max(len(e.target_ids) for e in items)
