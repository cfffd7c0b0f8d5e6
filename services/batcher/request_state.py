"""What the batcher knows about one request it has taken from Kafka until its final reply is out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from shared.records import GenerationRequest, Priority, TokenLogprob

__all__ = ["RequestState"]


@dataclass(eq=False)
class RequestState:
    """A request in flight in this batcher."""

    request: GenerationRequest
    priority: Priority
    tp: TopicPartition
    offset: int
    taken_at: float = field(default_factory=time.time)
    seq: int = 0
    """Next ReplyEvent sequence number."""
    text: str = ""
    """Text delivered so far (over every attempt)."""
    tokens: int = 0
    """Tokens delivered so far (over every attempt)."""
    tokens_before_attempt: int = 0
    """`tokens` when the current attempt was dispatched (its continuation): the worker's
    `Finished.completion_tokens` counts only the attempt's own."""
    prompt_tokens: int = 0
    attempts: int = 0
    tried: set[str] = field(default_factory=set)
    """Workers already tried."""
    dispatched_at: float | None = None
    first_token_at: float | None = None
    worker_id: str | None = None
    model: str | None = None
    cancelled: str | None = None
    """Why it was cancelled, once it was."""
    cancel_resent: bool = False
    """The cancellation was told to the worker again because text still came after it."""
    done: bool = False
    held: bool = False
    """Blocking mode: no deltas leave; the final answer is judged first (answer_guard.py)."""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """Log probabilities received and not published yet: those of a request that does not stream
    (or is held) wait here for its end, where they leave as deltas just before the final event
    (reply_publisher.py)."""
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    """The prompt tokens' log probabilities (requests with `params.prompt_logprobs`) not published
    yet: as `logprobs`, those of a request that does not stream wait here for its end."""
    prompt_logprobs_received: bool = False
    """A worker sent the prompt's log probabilities: a retry elsewhere does not ask for them again."""
    decoded_prompt: str | None = None
    """A prompt of token ids as the first worker to take it decoded it (`TokenDelta.prompt_text`)."""
    token_ids: list[int] = field(default_factory=list)
    """Generated tokens' ids (requests with `params.return_token_ids`) not published yet: as
    `logprobs`, those of a request that does not stream wait here for its end."""
    worker_prompt_ids: tuple[int, ...] = ()
    """The prompt's token ids as the first worker to take it tokenized them (requests with
    `params.return_token_ids`; `TokenDelta.prompt_token_ids`)."""
    worker_prompt_sent: bool = False
    """What the worker told of the prompt (`decoded_prompt`, `worker_prompt_ids`: both come on its
    first delta) went out on a reply (`ReplyEvent.prompt_text`, `prompt_token_ids`), which happens
    once."""

    @property
    def prompt_text(self) -> str:
        """The prompt as one text, for the result and the guardian: the request's
        (`GenerationRequest.prompt_as_text`), or a prompt of token ids as a worker decoded it."""
        return self.decoded_prompt or self.request.prompt_as_text()

    @property
    def id(self) -> str:
        return self.request.id

    def next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq

    @property
    def remaining_tokens(self) -> int:
        return max(0, self.request.params.max_new_tokens - self.tokens)
