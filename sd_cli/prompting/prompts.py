"""Prompt text → conditioning, as AUTOMATIC1111 reads prompts: emphasis, BREAK, long prompts, embeddings.

1. Emphasis (`parse_emphasis`): `(text)` ×1.1, `[text]` ÷1.1, `(text:1.3)` ×1.3, nesting multiplies,
   `\\(` `\\)` `\\[` `\\]` `\\\\` are literal characters, an unclosed bracket reaches to the end, a
   stray closing bracket is text. `BREAK` (upper case, a word of its own) ends the current chunk.
2. Chunks (`build_chunks`): each piece is tokenised on its own, tokens go into chunks of 75; a full
   chunk moves the tokens after its last comma (if within the last 20 tokens) to the next one.
   Each chunk becomes [SOT] + 75 tokens + [EOT], padded as the encoder pads, so a plain prompt of
   ≤ 75 tokens gives exactly the original's 77 tokens.
3. Encoding (`encode_prompts`): chunk by chunk through the text encoder (embedding vectors put in
   place of their name's tokens), concatenated to [B, 77·chunks, D]; with emphasis "original" each
   token's hidden state is multiplied by its weight and the chunk rescaled to its former mean.
   AUTOMATIC1111 takes that mean over the whole batch; here it is per prompt, so batching never
   changes an image. A prompt with all weights 1 is left untouched (bit-identical to the original).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from sd_cli.fields import default

CHUNK = 75  # tokens between [SOT] and [EOT]
COMMA_BACKTRACK = 20  # AUTOMATIC1111's default "comma padding backtrack"
ROUND, SQUARE = 1.1, 1 / 1.1
EMPHASIS_MODES = ("original", "none")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_ESCAPED = {"\\(": "(", "\\)": ")", "\\[": "[", "\\]": "]", "\\\\": "\\"}


@dataclass
class TextOptions:
    """How prompts become conditioning (--emphasis, --clip-skip, --embeddings)."""

    emphasis: str = "original"
    embeddings: object | None = None  # embeddings.EmbeddingLibrary, or None
    clip_skip: int | None = None  # stop clip_skip - 1 blocks before the last; None: the encoder's own layer


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)  # CHUNK + 2 ids once closed
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, object]] = field(default_factory=list)  # (position, Embedding)


# -- 1. emphasis ----------------------------------------------------------------------------------

def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """[(text, weight)] with equal neighbours merged; ("BREAK", -1) marks a chunk break."""
    pieces: list[list] = []  # [text, weight], weights multiplied in place as brackets close
    opened: list[tuple[str, int]] = []  # (bracket, index of the first piece inside it)
    pos = 0
    while pos < len(text):
        pos = _parse_step(text, pos, pieces, opened)
    for bracket, factor in (("(", ROUND), ("[", SQUARE)):  # unclosed: to the end
        for kind, start in opened:
            if kind == bracket:
                _multiply(pieces, start, factor)
    return _merged(pieces) or [("", 1.0)]


def _parse_step(text: str, pos: int, pieces: list, opened: list) -> int:
    """Consume one element at pos; return the next position."""
    two, char = text[pos:pos + 2], text[pos]
    weighted = _WEIGHT_CLOSE.match(text, pos) if char == ":" else None
    if two in _ESCAPED:
        _add_text(pieces, _ESCAPED[two])
        return pos + 2
    if char in "([":
        opened.append((char, len(pieces)))
    elif weighted and _innermost(opened, "("):
        _multiply(pieces, _pop(opened, "("), float(weighted[1]))
        return weighted.end()
    elif char == ")" and _innermost(opened, "("):
        _multiply(pieces, _pop(opened, "("), ROUND)
    elif char == "]" and _innermost(opened, "["):
        _multiply(pieces, _pop(opened, "["), SQUARE)
    else:
        end = _text_end(text, pos)
        _add_text(pieces, text[pos:end])
        return end
    return pos + 1


def _text_end(text: str, pos: int) -> int:
    """End of a run of ordinary characters (at least one)."""
    match = re.compile(r"[^\\()\[\]:]+").match(text, pos)
    return match.end() if match else pos + 1


def _innermost(opened: list, bracket: str) -> bool:
    return any(b == bracket for b, _ in opened)


def _pop(opened: list, bracket: str) -> int:
    """Close the innermost bracket of this kind (AUTOMATIC1111 keeps one stack per kind)."""
    for i in range(len(opened) - 1, -1, -1):
        if opened[i][0] == bracket:
            return opened.pop(i)[1]
    raise AssertionError(bracket)


def _add_text(pieces: list, text: str) -> None:
    parts = _BREAK.split(text)
    for i, part in enumerate(parts):
        if i:
            pieces.append(["BREAK", -1.0])
        if part:
            pieces.append([part, 1.0])


def _multiply(pieces: list, start: int, factor: float) -> None:
    for piece in pieces[start:]:
        if piece[1] != -1.0:
            piece[1] *= factor


def _merged(pieces: list) -> list[tuple[str, float]]:
    out: list[list] = []
    for text, weight in pieces:
        if out and out[-1][1] == weight and weight != -1.0:
            out[-1][0] += text
        else:
            out.append([text, weight])
    return [(text, weight) for text, weight in out]


# -- 2. chunks ------------------------------------------------------------------------------------

class _ChunkBuilder:
    def __init__(self, sot: int, eot: int, pad: int, comma: int):
        self.sot, self.eot, self.pad, self.comma = sot, eot, pad, comma
        self.chunks: list[Chunk] = []
        self.chunk, self.last_comma = Chunk(), -1

    def close(self) -> None:
        chunk, room = self.chunk, CHUNK - len(self.chunk.tokens)
        tokens = [self.sot] + chunk.tokens + [self.eot] + [self.pad] * room
        weights = [1.0] + chunk.weights + [1.0] * (room + 1)
        fixes = [(pos + 1, emb) for pos, emb in chunk.fixes]
        self.chunks.append(Chunk(tokens, weights, fixes))
        self.chunk, self.last_comma = Chunk(), -1

    def add_token(self, token: int, weight: float) -> None:
        chunk = self.chunk
        if token == self.comma:
            self.last_comma = len(chunk.tokens)
        elif len(chunk.tokens) == CHUNK and self.last_comma != -1 and CHUNK - self.last_comma <= COMMA_BACKTRACK:
            cut = self.last_comma + 1
            moved = Chunk(chunk.tokens[cut:], chunk.weights[cut:], [(p - cut, e) for p, e in chunk.fixes if p >= cut])
            self.chunk = Chunk(chunk.tokens[:cut], chunk.weights[:cut], [(p, e) for p, e in chunk.fixes if p < cut])
            self.close()
            self.chunk = moved
        if len(self.chunk.tokens) == CHUNK:
            self.close()
        self.chunk.tokens.append(token)
        self.chunk.weights.append(weight)

    def add_embedding(self, embedding, weight: float) -> None:
        if len(self.chunk.tokens) + embedding.count > CHUNK:
            self.close()
        self.chunk.fixes.append((len(self.chunk.tokens), embedding))
        self.chunk.tokens += [self.pad] * embedding.count
        self.chunk.weights += [weight] * embedding.count


def build_chunks(prompt: str, encoder, options: TextOptions) -> list[Chunk]:
    """The prompt's chunks, each CHUNK + 2 tokens with their weights and embedding positions."""
    bpe = encoder.bpe()
    builder = _ChunkBuilder(bpe.sot_token_id, bpe.eot_token_id, encoder.pad_id, bpe.encode(",")[0])
    pieces = parse_emphasis(prompt) if options.emphasis == "original" else [(prompt, 1.0)]
    for text, weight in pieces:
        if weight == -1.0:
            builder.close()
            continue
        _add_piece(builder, bpe.encode(text), weight, options.embeddings)
    if builder.chunk.tokens or not builder.chunks:
        builder.close()
    return builder.chunks


def _add_piece(builder: _ChunkBuilder, ids: list[int], weight: float, library) -> None:
    pos = 0
    while pos < len(ids):
        found = library.match(ids, pos) if library is not None else None
        if found is None:
            builder.add_token(ids[pos], weight)
            pos += 1
        else:
            embedding, length = found
            builder.add_embedding(embedding, weight)
            pos += length


def used_embeddings(prompts: list[str], encoder, options: TextOptions) -> list:
    """The embeddings these prompts use, in order of first use."""
    if options.embeddings is None:
        return []
    used: dict[str, object] = {}
    for prompt in prompts:
        for chunk in build_chunks(prompt, encoder, options):
            used.update({emb.name: emb for _, emb in chunk.fixes})
    return list(used.values())


# -- 3. encoding ----------------------------------------------------------------------------------

def encode_prompts(encoder, prompts: list[str], options: TextOptions) -> torch.Tensor:
    """[B, 77·chunks, D]: every prompt padded with empty chunks to the batch's longest."""
    per_prompt = [build_chunks(prompt, encoder, options) for prompt in prompts]
    count = max(len(chunks) for chunks in per_prompt)
    empty = build_chunks("", encoder, TextOptions())[0]
    parts = [_encode_chunks(encoder, [c[i] if i < len(c) else empty for c in per_prompt], options)
             for i in range(count)]
    return torch.cat(parts, dim=1)


def first_chunk_pooled(encoder, prompts: list[str], options: TextOptions) -> torch.Tensor:
    """[B, P] the pooled vector of each prompt's first chunk (SDXL's, as AUTOMATIC1111 takes it): its
    embeddings' vectors in place, its emphasis not applied (AUTOMATIC1111 weights the hidden states only)."""
    chunks = [build_chunks(prompt, encoder, options)[0] for prompt in prompts]
    tokens = torch.tensor([chunk.tokens for chunk in chunks], device=encoder.token_embedding.weight.device)
    embedded = _embedded(encoder, tokens, chunks) if any(chunk.fixes for chunk in chunks) else None
    return encoder.encode_with_pooled(tokens, clip_skip=options.clip_skip, embedded=embedded)[1]


def _encode_chunks(encoder, chunks: list[Chunk], options: TextOptions) -> torch.Tensor:
    """[B, 77, D] for one chunk of each prompt."""
    device = encoder.token_embedding.weight.device
    tokens = torch.tensor([chunk.tokens for chunk in chunks], device=device)
    if any(chunk.fixes for chunk in chunks):
        z = encoder.encode_embedded(_embedded(encoder, tokens, chunks), clip_skip=options.clip_skip)
    else:
        z = encoder.encode(tokens, clip_skip=options.clip_skip)
    if options.emphasis == "original" and any(w != 1.0 for chunk in chunks for w in chunk.weights):
        weights = torch.tensor([chunk.weights for chunk in chunks], device=device, dtype=z.dtype)
        z = _apply_weights(z, weights)
    return z


def _embedded(encoder, tokens: torch.Tensor, chunks: list[Chunk]) -> torch.Tensor:
    """Token embeddings [B, 77, D] with each embedding's vectors in place of its placeholders."""
    x = encoder.token_embedding(tokens).clone()
    for row, chunk in enumerate(chunks):
        for pos, embedding in chunk.fixes:
            vectors = embedding.vectors_for(encoder)
            x[row, pos:pos + len(vectors)] = vectors.to(x.device, x.dtype)
    return x


def _apply_weights(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """AUTOMATIC1111's "Original" emphasis, per prompt: scale each token, then restore the mean.

    A prompt whose weighted mean is only rounding noise (below 1e-6 of the mean magnitude: an
    encoder whose final LayerNorm has no bias) is left unrescaled: dividing by that noise is what
    AUTOMATIC1111 does, and it turns the conditioning into ±inf.
    """
    before = z.mean(dim=(1, 2), keepdim=True)
    z = z * weights[..., None]
    after = z.mean(dim=(1, 2), keepdim=True)
    noise = after.abs() <= 1e-6 * z.abs().mean(dim=(1, 2), keepdim=True)
    return z * torch.where(noise, torch.ones_like(after), before / after)


def match_lengths(encode_empty, cond: torch.Tensor, uncond: torch.Tensor | None):
    """Pad the shorter of cond/uncond [B, 77·k, D] with empty-prompt chunks to the same length;
    encode_empty(batch) -> [B, 77, D] is the empty prompt's conditioning."""
    if uncond is None or cond.shape[1] == uncond.shape[1]:
        return cond, uncond
    empty = encode_empty(cond.shape[0])
    pad = lambda z, n: torch.cat([z] + [empty.to(z.dtype)] * ((n - z.shape[1]) // empty.shape[1]), dim=1)  # noqa: E731
    longest = max(cond.shape[1], uncond.shape[1])
    return pad(cond, longest), pad(uncond, longest)


# -- the run's settings ---------------------------------------------------------------------------

def text_options(encoder, emphasis: str, clip_skip: int | None, embeddings_dir) -> TextOptions:
    """A run's --emphasis, --clip-skip and --embeddings for this text encoder, checked."""
    from sd_cli.prompting.embeddings import scan_folder
    from sd_cli.errors import UsageError

    blocks = len(encoder.transformer.resblocks)
    if clip_skip is not None and not 1 <= clip_skip <= blocks:
        raise UsageError(f"--clip-skip {clip_skip}: this text encoder has {blocks} blocks; use 1 to {blocks}")
    return TextOptions(emphasis, scan_folder(embeddings_dir, encoder.bpe().encode), clip_skip)


def default_clip_skip(encoder) -> int:
    """The model's own layer in --clip-skip terms: 1 (last block, SD 1.x), 2 (penultimate, SD 2.x)."""
    return 2 if encoder.layer == "penultimate" else 1


def infotext_values(session, prompt: str, negative_prompt: str) -> dict:
    """The recorded clip_skip, ti_hashes and emphasis of a run (run.session.Session; AUTOMATIC1111's
    "Clip skip", "TI hashes", "Emphasis"; sd_cli/fields.py), each only when it says something."""
    encoder, options = session.model.text_towers[0], session.text
    values: dict = {}
    if options.clip_skip is not None and options.clip_skip != default_clip_skip(encoder):
        values["clip_skip"] = options.clip_skip
    used = used_embeddings([prompt, negative_prompt], encoder, options)
    if used:
        values["ti_hashes"] = ", ".join(f"{emb.name}: {emb.hash}" for emb in used)
    if options.emphasis != default("emphasis"):
        values["emphasis"] = options.emphasis
    return values
