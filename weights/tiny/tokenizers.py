"""Tokenizers for the tiny demo models, built from in-code vocabularies.

Nothing here downloads: transformers 5 tokenizers accept their vocabulary in the
constructor, so each one is assembled from the byte alphabet and saved with the
pipeline. The real checkpoints bring their real tokenizers; these only have to
be the same classes with the same special-token layout.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

from transformers import CLIPTokenizer, T5Tokenizer

if TYPE_CHECKING:
    from transformers import GemmaTokenizer, LlamaTokenizer, Qwen2Tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable-unicode table, which CLIP's BPE expects.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


CLIP_VOCAB_SIZE = 514
CLIP_BOS_ID = 512
CLIP_EOS_ID = 513


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """Byte-level CLIP BPE with no merges: 256 bytes, 256 word-final bytes, bos, eos."""
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab |= {c + "</w>": 256 + i for i, c in enumerate(chars)}
    vocab["<|startoftext|>"] = CLIP_BOS_ID
    vocab["<|endoftext|>"] = CLIP_EOS_ID
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77, pad_token=pad_token)


def t5_tokenizer(model_max_length: int = 512) -> T5Tokenizer:
    """Unigram T5 tokenizer over printable ASCII; pad=0, eos=1, unk=2 as in T5."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    ascii_chars = [c for c in string.printable if c not in " \t\n\r\x0b\x0c"]
    pieces += [(c, -5.0) for c in ascii_chars]
    pieces += [("▁" + c, -4.0) for c in ascii_chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def t5_vocab_size() -> int:
    """Number of ids the tiny T5 tokenizer can emit (sizes the tiny encoder's embedding)."""
    return len(t5_tokenizer().get_vocab())


GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


def gemma_tokenizer(model_max_length: int = 1024) -> GemmaTokenizer:
    """Gemma-style BPE with byte fallback: <pad>0 <eos>1 <bos>2 <unk>3 <mask>4, 256 byte tokens, then text."""
    from transformers import GemmaTokenizer

    vocab, merges = _byte_fallback_bpe(GEMMA_SPECIALS)
    return GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def _byte_fallback_bpe(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """SentencePiece-style BPE vocabulary: specials, 256 <0xNN> byte tokens, "▁", ASCII, "▁"+alphanumerics."""
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    vocab["▁"] = len(vocab)
    alnum = string.ascii_letters + string.digits
    for c in alnum + string.punctuation:
        vocab.setdefault(c, len(vocab))
    for c in alnum:
        vocab["▁" + c] = len(vocab)
    return vocab, [("▁", c) for c in alnum]


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>", "<think>", "</think>"]
# ChatML, as Qwen2.5/Qwen3 use it; `enable_thinking=False` adds the empty think block Qwen3 expects.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% else %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and not enable_thinking %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)


def qwen_tokenizer(model_max_length: int = 1024) -> Qwen2Tokenizer:
    """Byte-level BPE over the 256 byte symbols (no merges) plus Qwen's special tokens and chat template."""
    from transformers import AddedToken, Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(_bytes_to_unicode().values())}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", model_max_length=model_max_length)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS], special_tokens=True)
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


MISTRAL_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                    "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
# Mistral Small 3.x's layout: system text in [SYSTEM_PROMPT] blocks, user turns in [INST] blocks, an image as [IMG]
# (the Pixtral processor expands each [IMG] to the image's patch grid).
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '[SYSTEM_PROMPT]' }}{% else %}{{ '[INST]' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% else %}{{ '[IMG]' }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'system' %}{{ '[/SYSTEM_PROMPT]' }}{% else %}{{ '[/INST]' }}{% endif %}"
    "{% endfor %}"
)


def mistral_tokenizer(model_max_length: int = 1024) -> LlamaTokenizer:
    """Byte-fallback BPE with Mistral's control tokens ([INST], [IMG], ...) and a Mistral chat template."""
    from transformers import AddedToken, LlamaTokenizer

    vocab, merges = _byte_fallback_bpe(MISTRAL_SPECIALS[:4])
    tok = LlamaTokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>",
                         eos_token="</s>", pad_token="<pad>", model_max_length=model_max_length)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in MISTRAL_SPECIALS[4:]],
                   special_tokens=True)
    tok.chat_template = MISTRAL_CHAT_TEMPLATE
    return tok
