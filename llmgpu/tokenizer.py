"""Tokenizer side: chat templates, streaming detokenization, and tokenizers rebuilt from GGUF metadata.

The tokenizer is always a ``tokenizers.Tokenizer``. It never adds BOS by itself in llmgpu's use:
encode with :func:`encode_prompt`, which prepends BOS only when the checkpoint asks for it
(``Checkpoint.add_bos``) and the text (e.g. a rendered chat template) does not already start with it.
"""
from __future__ import annotations

import json
from datetime import datetime

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

# ==== chat templates ===========================================================================

# Used only when a checkpoint ships no chat template: ChatML, as SmolLM2 and Qwen use it.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_ENV = None


def _jinja_env():
    global _ENV
    if _ENV is None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            from jinja2.exceptions import TemplateError
            raise TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                              sort_keys=sort_keys)

        # The same environment options transformers uses, so templates render byte-identically.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        _ENV = env
    return _ENV


def render_chat(template: str | None, messages: list[dict], add_generation_prompt: bool = True,
                bos_token: str | None = None, eos_token: str | None = None, **kwargs) -> str:
    """Render a conversation with the checkpoint's Jinja chat template, as transformers does.

    ``template=None`` (the checkpoint has none) falls back to :data:`FALLBACK_CHAT_TEMPLATE`
    (ChatML); models not trained on ChatML will answer poorly with it, but it does run.
    Extra keyword arguments (``tools=``, ``enable_thinking=`` ...) are passed to the template.
    """
    t = _jinja_env().from_string(template if template is not None else FALLBACK_CHAT_TEMPLATE)
    return t.render(messages=messages, add_generation_prompt=add_generation_prompt,
                    bos_token=bos_token or "", eos_token=eos_token or "", **kwargs)


def encode_prompt(tokenizer: Tokenizer, text: str, *, add_bos: bool = False,
                  bos_token_id: int | None = None) -> list[int]:
    """Token ids of ``text`` (special tokens in the text are parsed), with BOS prepended if asked
    and not already there."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if add_bos and bos_token_id is not None and (not ids or ids[0] != bos_token_id):
        ids = [bos_token_id] + ids
    return ids


# ==== streaming detokenization =================================================================

class IncrementalDetokenizer:
    """Turns a stream of token ids into text pieces that are always complete UTF-8.

    A character split over several byte tokens decodes to U+FFFD until its last byte arrives, so text
    is held back while the decoded tail ends in U+FFFD. Decoding re-reads a short window starting one
    emitted chunk back, so decoders that strip a leading space (SentencePiece) keep the spaces between
    chunks.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # window start: ids[_prefix:_read] were emitted in the previous chunk
        self._read = 0  # ids before this index are emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        done = self._decode(self.ids[self._prefix:self._read])
        text = self._decode(self.ids[self._prefix:])
        if len(text) > len(done) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return text[len(done):]
        return ""

    def flush(self) -> str:
        """Whatever is held back (possibly ending in U+FFFD if the stream stopped mid-character)."""
        done = self._decode(self.ids[self._prefix:self._read])
        text = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return text[len(done):]


# ==== tokenizers from GGUF metadata ============================================================

# llama.cpp's `tokenizer.ggml.pre` names -> split regex applied before byte-level BPE.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF_PRE_TOKENIZERS = ("default", "gpt-2", "gpt2", "smollm", "starcoder", "llama-bpe", "llama3",
                       "smaug-bpe", "qwen2")

# GGUF token types (llama.cpp's llama_token_type)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def tokenizer_from_gguf(fields: dict) -> Tokenizer:
    """Rebuild a ``tokenizers.Tokenizer`` from GGUF ``tokenizer.ggml.*`` metadata (a dict of values).

    Supports ``gpt2`` (byte-level BPE, pre-tokenizers in :data:`GGUF_PRE_TOKENIZERS`) and ``llama``
    (SentencePiece BPE with byte fallback) models. Control tokens become special tokens.
    """
    check_gguf_tokenizer_fields(fields)
    kind = fields.get("tokenizer.ggml.model")
    tokens = list(fields.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise ValueError("GGUF has no tokenizer.ggml.tokens; use the Hugging Face checkpoint, which ships "
                         "tokenizer.json")
    types = list(fields.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("GGUF vocabulary has duplicate tokens; cannot build a tokenizer from it")
    if kind == "gpt2":
        tok = _byte_level_bpe(fields, vocab)
    elif kind == "llama":
        tok = _sentencepiece_bpe(fields, vocab, tokens, types)
    else:
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported (supported: gpt2, llama); "
                         "load the Hugging Face checkpoint instead")
    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types) if ty in (_CONTROL, _UNKNOWN)]
    user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == _USER_DEFINED]
    tok.add_special_tokens(special)
    tok.add_tokens(user)
    return tok


def _list_of(kind):
    return lambda v: isinstance(v, list) and all(isinstance(x, kind) and not isinstance(x, bool) for x in v)


# tokenizer.ggml.* key -> (check, what it must be); a wrong type fails here, named, not deep in tokenizers
_GGUF_TOKENIZER_FIELDS = {
    "model": (lambda v: isinstance(v, str), "a string"),
    "pre": (lambda v: isinstance(v, str), "a string"),
    "tokens": (_list_of(str), "a list of strings"),
    "token_type": (_list_of(int), "a list of integers"),
    "scores": (_list_of((int, float)), "a list of numbers"),
    "merges": (lambda v: _list_of(str)(v) and all(" " in m for m in v), "a list of 'left right' strings"),
    "unknown_token_id": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a token id"),
    "add_space_prefix": (lambda v: isinstance(v, bool), "true or false"),
}


def check_gguf_tokenizer_fields(fields: dict) -> None:
    """Raise a ValueError naming the first ``tokenizer.ggml.*`` value with a wrong type or length."""
    n = None
    for key, (ok, what) in _GGUF_TOKENIZER_FIELDS.items():
        v = fields.get("tokenizer.ggml." + key)
        if v is not None and not ok(v):
            raise ValueError(f"GGUF metadata tokenizer.ggml.{key} must be {what}; the file is damaged or was "
                             "written by an unsupported converter")
        if key in ("tokens", "token_type", "scores") and v is not None:
            if n is not None and len(v) != n:
                raise ValueError(f"GGUF metadata tokenizer.ggml.{key} has {len(v)} entries for {n} tokens; "
                                 "the file is damaged")
            n = len(v)
    unk = fields.get("tokenizer.ggml.unknown_token_id")
    if unk is not None and n is not None and unk >= n:
        raise ValueError(f"GGUF tokenizer.ggml.unknown_token_id {unk} is outside the {n} tokens; the file is damaged")


def _byte_level_bpe(fields: dict, vocab: dict) -> Tokenizer:
    pre = fields.get("tokenizer.ggml.pre") or "default"
    merges = [tuple(m.split(" ", 1)) for m in fields.get("tokenizer.ggml.merges") or []]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    no_regex = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in ("default", "gpt-2", "gpt2"):
        pt = byte_level
    elif pre in ("smollm", "starcoder"):
        pt = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("llama-bpe", "llama3", "smaug-bpe"):
        pt = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), "isolated"), no_regex])
    elif pre == "qwen2":
        pt = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_QWEN2_SPLIT), "isolated"), no_regex])
    else:
        raise ValueError(f"GGUF pre-tokenizer {pre!r} is not supported (supported: "
                         f"{', '.join(GGUF_PRE_TOKENIZERS)}); load the Hugging Face checkpoint instead")
    tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=pre in ("llama-bpe", "llama3", "smaug-bpe")))
    if pre == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pt
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_bpe(fields: dict, vocab: dict, tokens: list, types: list) -> Tokenizer:
    scores = fields.get("tokenizer.ggml.scores")
    if scores is None:
        raise ValueError("GGUF llama tokenizer without tokenizer.ggml.scores; cannot derive BPE merges")
    # SentencePiece BPE merges the adjacent pair whose merged piece scores highest; as HF BPE ranks,
    # list every split of every normal piece, ordered by that piece's score.
    merges = []
    for piece in sorted((t for t, ty in zip(tokens, types) if ty == _NORMAL and len(t) > 1),
                        key=lambda t: -scores[vocab[t]]):
        splits = [(piece[:i], piece[i:]) for i in range(1, len(piece))
                  if piece[:i] in vocab and piece[i:] in vocab]
        merges += sorted(splits, key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
    unk_id = fields.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None else None
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    prefix = fields.get("tokenizer.ggml.add_space_prefix", True)
    norm = [normalizers.Replace(" ", "\u2581")]
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        norm.insert(0, normalizers.Prepend("\u2581"))
        dec.append(decoders.Strip(" ", 1, 0))
    tok.normalizer = normalizers.Sequence(norm)
    tok.decoder = decoders.Sequence(dec)
    return tok
