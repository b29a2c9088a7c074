"""The serving contract, spoken: the two models' signatures as typed calls over either backend.

Calls are split so that none exceeds the batch sizes the TF Serving configs allow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from gateway.backends import Backend
from gateway.errors import ModelError
from memefly import contract as c
from memefly.decoding.distinct import CaptionSet

VOCABULARY_PAGE = 1024  # the decoder's max_batch_size


@dataclass(frozen=True)
class Template:
    id: int
    name: str
    box_count: int
    box_counts: frozenset[int] | None = None  # the counts its captions may have (None: any)


def bits_to_counts(mask: int) -> frozenset[int] | None:
    return frozenset(b for b in range(1, 31) if mask >> b & 1) or None


def _bytes(strings: Iterable[str | bytes]) -> np.ndarray:
    return np.array([s.encode("utf-8") if isinstance(s, str) else s for s in strings], dtype=object)


def _text(values: Iterable[object]) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


class ServedModels:
    def __init__(
        self, backend: Backend, *, encoder_max_batch: int = 32, decoder_max_rows: int = 512, wire_state: str = "float32"
    ):
        self.backend = backend
        self.encoder_max_batch = encoder_max_batch
        self.decoder_max_rows = decoder_max_rows
        # State and context stay in the wire's dtype from `init` on: no conversion per step.
        self._state_dtype = np.dtype(wire_state)
        self._step_signature = c.STEP_FLOAT16_SIGNATURE if wire_state == "float16" else c.STEP_SIGNATURE

    async def encode(self, images: list[bytes]) -> np.ndarray:
        """Image bytes -> template_probs [N, T] (features stay on the server)."""
        parts = []
        for i in range(0, len(images), self.encoder_max_batch):
            out = await self.backend.predict(
                c.ENCODER_MODEL,
                c.ENCODER_BYTES_SIGNATURE,
                {c.IMAGE_BYTES: _bytes(images[i : i + self.encoder_max_batch])},
                [c.TEMPLATE_PROBS],
            )
            parts.append(np.asarray(out[c.TEMPLATE_PROBS], np.float32))
        return np.concatenate(parts)

    async def init(self, template_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        states, contexts = [], []
        for i in range(0, len(template_probs), self.decoder_max_rows):
            out = await self.backend.predict(
                c.DECODER_MODEL,
                c.INIT_SIGNATURE,
                {c.TEMPLATE_PROBS: np.asarray(template_probs[i : i + self.decoder_max_rows], np.float32)},
            )
            states.append(out[c.STATE])
            contexts.append(out[c.CONTEXT])
        return (
            np.concatenate(states).astype(self._state_dtype, copy=False),
            np.concatenate(contexts).astype(self._state_dtype, copy=False),
        )

    async def step(
        self, tokens: np.ndarray, state: np.ndarray, context: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One decoder step -> (top_ids [N, K], top_log_probs [N, K], state [N, H])."""
        out = await self.backend.predict(
            c.DECODER_MODEL,
            self._step_signature,
            {
                c.TOKEN: np.asarray(tokens, np.int32),
                c.STATE: np.asarray(state, self._state_dtype),
                c.CONTEXT: np.asarray(context, self._state_dtype),
            },
        )
        return out[c.TOP_IDS], out[c.TOP_LOG_PROBS], out[c.STATE]

    async def metadata(self, model: str, keys: tuple[str, ...]) -> dict[str, str]:
        out = await self.backend.predict(model, c.METADATA_SIGNATURE, {c.KEYS: _bytes(keys)})
        return dict(zip(keys, _text(out[c.VALUES]), strict=True))

    async def vocabulary(self, size: int) -> list[str]:
        tokens: list[str] = []
        for start in range(0, size, VOCABULARY_PAGE):
            ids = np.arange(start, min(size, start + VOCABULARY_PAGE), dtype=np.int32)
            out = await self.backend.predict(c.DECODER_MODEL, c.VOCABULARY_SIGNATURE, {c.IDS: ids})
            tokens.extend(_text(out[c.TOKENS]))
        if tuple(tokens[: len(c.SPECIAL_TOKENS)]) != c.SPECIAL_TOKENS:
            raise ModelError(
                f"the decoder's special tokens {tokens[:5]} are not the contract's {list(c.SPECIAL_TOKENS)}"
            )
        return tokens

    async def templates(self, count: int) -> list[Template]:
        ids = np.arange(count, dtype=np.int32)
        out = await self.backend.predict(c.DECODER_MODEL, c.TEMPLATES_SIGNATURE, {c.IDS: ids})
        # Models exported before the box-count rule have no such output: any count then.
        allowed = out.get(c.ALLOWED_BOX_COUNTS, np.zeros(count, np.int32))
        return [
            Template(int(i), name, int(boxes), bits_to_counts(int(mask)))
            for i, name, boxes, mask in zip(ids, _text(out[c.NAMES]), out[c.BOX_COUNTS], allowed, strict=True)
        ]

    async def training_captions(self, count: int) -> CaptionSet:
        """The decoder's training-caption fingerprints (empty for a model exported without them)."""
        rows = -(-count // c.FINGERPRINT_ROW)
        parts = []
        for start in range(0, rows, VOCABULARY_PAGE):
            ids = np.arange(start, min(rows, start + VOCABULARY_PAGE), dtype=np.int32)
            out = await self.backend.predict(c.DECODER_MODEL, c.TRAINING_CAPTIONS_SIGNATURE, {c.IDS: ids})
            parts.append(np.asarray(out[c.FINGERPRINTS], np.int64).reshape(-1))
        return CaptionSet(np.concatenate(parts)[:count] if parts else np.zeros(0, np.int64))
