"""Decoding options, named as in Hugging Face `generate()`, with their limits.

The default strategy (no `do_sample`, no beam settings): draw `num_candidates` captions
with temperature and nucleus sampling, seeded by the input unless a seed is given, and
return the best `num_return_sequences` by length-normalised score that are distinct memes
and not training captions. Set `do_sample=false` (or any beam setting) for beam search,
`do_sample=true` for plain sampling.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from memefly.contract import TOP_K
from memefly.decoding.limits import MAX_BEAMS, MAX_CANDIDATES, MAX_LENGTH

# The default strategy's settings, chosen by measurement over all templates (docs/model-card.md).
DEFAULT_CANDIDATES = 16
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
DEFAULT_REPETITION_PENALTY = 1.3
_DEFAULTS = {
    "num_candidates": DEFAULT_CANDIDATES,
    "temperature": DEFAULT_TEMPERATURE,
    "top_p": DEFAULT_TOP_P,
    "repetition_penalty": DEFAULT_REPETITION_PENALTY,
}
# None: num_return_sequences
_PLAIN_SAMPLING = {"num_candidates": None, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0}
_BEAM_SETTINGS = {"num_beams", "num_beam_groups", "diversity_penalty"}


class DecodingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    _default_strategy: bool = PrivateAttr(False)  # set by validation, not a request field

    num_beams: int = Field(5, ge=1, le=MAX_BEAMS, description="beams (beam search) per request")
    num_return_sequences: int = Field(5, ge=1, le=MAX_BEAMS, description="captions returned")
    max_length: int = Field(32, ge=1, le=MAX_LENGTH, description="most tokens per caption (box separators count)")
    min_length: int = Field(1, ge=0, le=MAX_LENGTH, description="fewest tokens before <end> may come")
    length_penalty: float = Field(
        1.0, ge=-5.0, le=5.0, description="score = sum log p / (length + 1) ** length_penalty"
    )
    no_repeat_ngram_size: int = Field(3, ge=0, le=10, description="no n-gram of this size twice in a caption (0: off)")
    repetition_penalty: float | None = Field(
        None,
        ge=1.0,
        le=10.0,
        description=(
            "a word already in the caption: its log-prob times this, for choosing and sampling "
            f"(default: {DEFAULT_REPETITION_PENALTY} for the default strategy, else 1: off)"
        ),
    )
    num_beam_groups: int = Field(1, ge=1, le=MAX_BEAMS, description="diverse beam search: groups of beams")
    diversity_penalty: float = Field(
        0.0, ge=0.0, le=100.0, description="subtracted per earlier group's use of a token at a step"
    )
    do_sample: bool | None = Field(
        None,
        description="true: plain sampling; false: beam search; "
        "unset: the default strategy (sampled candidates, the best distinct ones kept), "
        "or beam search when a beam setting is given",
    )
    num_candidates: int | None = Field(
        None,
        ge=1,
        le=MAX_CANDIDATES,
        description=(
            "sampling: captions drawn before the best num_return_sequences are kept "
            f"(default: {DEFAULT_CANDIDATES} for the default strategy, else num_return_sequences)"
        ),
    )
    temperature: float | None = Field(
        None,
        gt=0.0,
        le=10.0,
        description=(f"sampling temperature (default: {DEFAULT_TEMPERATURE} for the default strategy, else 1.0)"),
    )
    top_k: int = Field(0, ge=0, le=TOP_K, description=f"sample from the k likeliest (0: all {TOP_K} the decoder sends)")
    top_p: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description=(f"nucleus sampling (default: {DEFAULT_TOP_P} for the default strategy, else 1.0)"),
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description=("same seed, same samples (default strategy without a seed: seeded by the image or template)"),
    )
    allow_training_captions: bool = Field(False, description="may return a caption of the training data verbatim")
    safe: bool = Field(True, description="never generate words from the offensive-word list")
    blocked_words: list[str] = Field(default_factory=list, max_length=200, description="words never generated")
    exclude: list[str] = Field(
        default_factory=list, max_length=100, description="captions (as returned) not to return again"
    )

    @model_validator(mode="after")
    def _consistent(self) -> DecodingOptions:
        self._default_strategy = self.do_sample is None and not (_BEAM_SETTINGS & self.model_fields_set)
        # Resolved values go into __dict__ directly: they stay "unset", so a dump with
        # exclude_unset (a client sending these options on) keeps meaning the defaults.
        resolved = self.__dict__
        if self.do_sample is None:
            resolved["do_sample"] = self._default_strategy
        if self.do_sample:
            fallback = _DEFAULTS if self._default_strategy else _PLAIN_SAMPLING
            for name, value in fallback.items():
                if getattr(self, name) is None:
                    resolved[name] = value if value is not None else self.num_return_sequences
            assert self.num_candidates is not None  # the fallback above fills it when None
            if "num_candidates" not in self.model_fields_set:  # never fewer than the captions asked for
                resolved["num_candidates"] = max(self.num_candidates, self.num_return_sequences)
            if self.num_candidates < self.num_return_sequences:
                raise ValueError(
                    f"num_candidates ({self.num_candidates}) is less than "
                    f"num_return_sequences ({self.num_return_sequences})"
                )
        else:
            for name in ("temperature", "top_p", "repetition_penalty"):
                if getattr(self, name) is None:
                    resolved[name] = 1.0
        if self.min_length > self.max_length:
            raise ValueError(f"min_length ({self.min_length}) is more than max_length ({self.max_length})")
        if self.do_sample:
            if self.num_beams != 1 and "num_beams" in self.model_fields_set:
                raise ValueError("do_sample draws num_return_sequences independent samples: leave num_beams at 1")
            if self.num_beam_groups != 1:
                raise ValueError("num_beam_groups is for beam search, not with do_sample")
        else:
            if self.num_return_sequences > self.num_beams:
                raise ValueError(
                    f"num_return_sequences ({self.num_return_sequences}) is more than num_beams ({self.num_beams})"
                )
            if self.num_beams % self.num_beam_groups:
                raise ValueError(
                    f"num_beams ({self.num_beams}) must be a multiple of num_beam_groups ({self.num_beam_groups})"
                )
        if any(len(text) > 500 for text in self.exclude):
            raise ValueError("exclude: a caption is longer than 500 characters")
        if any(len(word) > 100 for word in self.blocked_words):
            raise ValueError("blocked_words: a word is longer than 100 characters")
        return self

    @property
    def default_strategy(self) -> bool:
        """Sampled candidates with the default settings: seeded by the input when no seed is given."""
        return self._default_strategy

    @property
    def rows(self) -> int:
        """Decoder rows this request occupies per step."""
        if self.do_sample:
            assert self.num_candidates is not None  # resolved by validation whenever do_sample
            return self.num_candidates
        return self.num_beams
