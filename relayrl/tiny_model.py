"""A tiny random Llama (head_dim 64, tied embeddings) and a BPE tokenizer trained on the fly:
the built-in model `tiny-random`, used by tests and benchmarks where no hub is reachable."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    words = (
        "what is the answer solve compute number result plus minus times equals please reply "
        "with only final sum difference product python code print def return import for in "
        "range if else true false value tool call output error try again wrong correct "
        "select from where table count order by group limit and or not"
    ).split(" ")
    lines = [" ".join(words[i : i + 7]) for i in range(0, len(words), 3)]
    lines += [
        f"{a} + {b} = {a + b}. {a} - {b} = {a - b}. {a} * {b}" for a in range(40) for b in (3, 17)
    ]
    lines += ['<answer>42</answer> <tool_call>{"name": "calc"}</tool_call> ```python\n```']
    return lines


def build_tiny_model(
    target: Path,
    vocab_size: int = 512,
    layers: int = 2,
    seed: int = 0,
    *,
    hidden: int = 128,
    intermediate: int = 256,
    heads: int = 2,
    kv_heads: int = 2,
    model_vocab: int | None = None,
) -> None:
    """Writes the tokenizer (`vocab_size` BPE tokens) and a random Llama of the given shape;
    `model_vocab` widens the embedding past the tokenizer (for size benchmarks)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=model_vocab or len(fast),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    fast.save_pretrained(target)
