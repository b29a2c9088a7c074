"""Decoding options, named as in Hugging Face `generate()`, with their limits."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.decoding.limits import MAX_BEAMS, MAX_LENGTH
from memefly.contract import TOP_K


class DecodingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_beams: int = Field(5, ge=1, le=MAX_BEAMS, description="beams (beam search) per request")
    num_return_sequences: int = Field(5, ge=1, le=MAX_BEAMS, description="captions returned")
    max_length: int = Field(32, ge=1, le=MAX_LENGTH, description="most tokens per caption (box separators count)")
    min_length: int = Field(1, ge=0, le=MAX_LENGTH, description="fewest tokens before <end> may come")
    length_penalty: float = Field(1.0, ge=-5.0, le=5.0, description="score = sum log p / (length + 1) ** length_penalty")
    no_repeat_ngram_size: int = Field(3, ge=0, le=10, description="no n-gram of this size twice in a caption (0: off)")
    num_beam_groups: int = Field(1, ge=1, le=MAX_BEAMS, description="diverse beam search: groups of beams")
    diversity_penalty: float = Field(0.0, ge=0.0, le=100.0, description="subtracted per earlier group's use of a token at a step")
    do_sample: bool = Field(False, description="sample instead of beam search")
    temperature: float = Field(1.0, gt=0.0, le=10.0)
    top_k: int = Field(0, ge=0, le=TOP_K, description=f"sample from the k likeliest (0: all {TOP_K} the decoder sends)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="same seed, same samples")
    safe: bool = Field(True, description="never generate words from the offensive-word list")
    blocked_words: list[str] = Field(default_factory=list, max_length=200, description="words never generated")
    exclude: list[str] = Field(default_factory=list, max_length=100, description="captions (as returned) not to return again")

    @model_validator(mode="after")
    def _consistent(self) -> "DecodingOptions":
        if self.min_length > self.max_length:
            raise ValueError(f"min_length ({self.min_length}) is more than max_length ({self.max_length})")
        if self.do_sample:
            if self.num_beams != 1 and "num_beams" in self.model_fields_set:
                raise ValueError("do_sample draws num_return_sequences independent samples: leave num_beams at 1")
            if self.num_beam_groups != 1:
                raise ValueError("num_beam_groups is for beam search, not with do_sample")
        else:
            if self.num_return_sequences > self.num_beams:
                raise ValueError(f"num_return_sequences ({self.num_return_sequences}) is more than num_beams ({self.num_beams})")
            if self.num_beams % self.num_beam_groups:
                raise ValueError(f"num_beams ({self.num_beams}) must be a multiple of num_beam_groups ({self.num_beam_groups})")
        if any(len(text) > 500 for text in self.exclude):
            raise ValueError("exclude: a caption is longer than 500 characters")
        if any(len(word) > 100 for word in self.blocked_words):
            raise ValueError("blocked_words: a word is longer than 100 characters")
        return self

    @property
    def rows(self) -> int:
        """Decoder rows this request occupies per step."""
        return self.num_return_sequences if self.do_sample else self.num_beams
