"""A CPU inference engine on plain `transformers` models, behind the Engine protocol.

Concurrent `generate` calls share one forward pass: a scheduler thread keeps a running batch
over a KV cache and, at every token, admits the requests that are waiting (prefilled
left-padded, then merged into the batch) and retires the rows that finished, so the model
sees every sequence in flight at once (continuous batching).

The engine can also generate with a model it is handed instead of loading one (a colocated
learner's own module, cluster/colocated.py): `paused()` then gives its owner the model
exclusively, once the running rows have finished, and `mark_version` names the weights the
owner left in it."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, DynamicCache

from relayrl.actors.engine import Completion, SamplingSettings
from relayrl.actors.stop_strings import StopStrings
from relayrl.config import Dtype
from relayrl.grouped_attention import use_grouped_sdpa
from relayrl.trajectory import EpisodeEnd

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TransformersSettings:
    model_path: str
    dtype: Dtype = "float32"
    torch_threads: int = 1
    seed: int = 0
    # Sequences in one forward pass at most; further requests wait for rows to finish.
    max_batch_rows: int = 256
    # A fresh batch waits while requests keep arriving this close together (at most ten
    # such waits): a worker's groups start one after another, and one prefill then admits
    # them all instead of the latecomers joining steps behind. Off (0) by default: at 50 ms
    # it kept an autoscaled fleet from shrinking (tests/test_autoscale_job.py) and gained
    # nothing measurable in a colocated step.
    gather_window_s: float = 0.0


@dataclass(eq=False)
class _Request:
    prompt_ids: list[int]
    settings: SamplingSettings
    n: int
    stop_ids: frozenset[int]
    stop_strings: StopStrings | None
    # Each request draws from its own stream, so its samples never depend on its batch-mates.
    generator: torch.Generator
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Completion]]
    completions: list[Completion | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.completions = [None] * self.n

    def settle(self, result: list[Completion] | None, error: BaseException | None) -> None:
        _deliver(self.loop, self.future, result, error)


def _deliver(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
) -> None:
    """Complete an asyncio future from the scheduler thread."""
    # A closed loop means nobody waits for this future any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled by its caller
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@dataclass(eq=False)
class _Row:
    """One sequence of the running batch: sample `index` of its request."""

    request: _Request
    index: int
    version: int
    position: int  # position id of the next token fed to the model
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


@dataclass(eq=False)
class _Load:
    state: Mapping[str, torch.Tensor]
    version: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Zeros before `tensor` along `dim` (counted from the end) up to `length`."""
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (-dim - 1) + [missing, 0]
    return F.pad(tensor, pad)


class TransformersEngine:
    """Samples with temperature and top-p only, so the learner can recompute the same
    processed log-probs from logits / temperature (top-k and penalties stay off).
    Stop strings need the `tokenizer`."""

    def __init__(
        self,
        settings: TransformersSettings,
        eos_token_ids: tuple[int, ...],
        tokenizer: Any = None,
        model: torch.nn.Module | None = None,
    ) -> None:
        """`model`: generate with this module (its parameters shared, never copied) instead
        of loading `settings.model_path`."""
        torch.set_num_threads(settings.torch_threads)
        self._settings = settings
        self._model = (
            model
            if model is not None
            else AutoModelForCausalLM.from_pretrained(
                settings.model_path, dtype=_DTYPES[settings.dtype]
            )
        )
        self._model.eval()
        use_grouped_sdpa(self._model)
        self._vocab = self._model.get_input_embeddings().num_embeddings
        self._eos = eos_token_ids
        self._tokenizer = tokenizer
        self._version = 0
        # Requests without a seed get one from this stream, in the order they arrive.
        self._seeds = random.Random(settings.seed)
        # Shared with the scheduler thread, under `_wake`.
        self._wake = threading.Condition()
        self._pending: list[_Request] = []
        self._loads: list[_Load] = []
        self._interrupt = False
        self._closed = False
        # Owners waiting for, or holding, the model exclusively (paused()).
        self._pause_requests = 0
        self._paused = False
        # The running batch: owned by the scheduler thread.
        self._rows: list[_Row] = []
        self._complete: list[_Request] = []
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros(0, 0, dtype=torch.long)
        self._logits = torch.zeros(0, 0)
        # The most sequences and requests one forward pass has held, and the prefills that
        # admitted them (observability).
        self.peak_rows = 0
        self.peak_requests = 0
        self.prefills = 0
        self._thread = threading.Thread(target=self._serve, name="hf-engine", daemon=True)
        self._thread.start()

    @property
    def version(self) -> int:
        return self._version

    @property
    def rows_in_flight(self) -> int:
        """Sequences in the running batch now."""
        return len(self._rows)

    async def generate(
        self, prompt_ids: list[int], settings: SamplingSettings, n: int
    ) -> list[Completion]:
        if settings.stop_strings and self._tokenizer is None:
            raise ValueError("stop strings need the engine to be given the tokenizer")
        if not prompt_ids or not all(0 <= t < self._vocab for t in prompt_ids):
            raise ValueError(f"a prompt needs at least one token, each in [0, {self._vocab})")
        if n < 1:
            return []
        loop = asyncio.get_running_loop()
        seed = settings.seed if settings.seed is not None else self._seeds.randrange(2**63)
        request = _Request(
            prompt_ids=list(prompt_ids),
            settings=settings,
            n=n,
            stop_ids=frozenset((*self._eos, *settings.stop_token_ids)),
            stop_strings=(
                StopStrings(self._tokenizer, settings.stop_strings)
                if settings.stop_strings
                else None
            ),
            generator=torch.Generator().manual_seed(seed),
            loop=loop,
            future=loop.create_future(),
        )
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._pending.append(request)
            self._wake.notify_all()
        return await request.future

    def interrupt(self) -> None:
        """End every running and waiting request at the next token; their unfinished samples
        return "abort" with what they have so far (weight-update interrupt)."""
        with self._wake:
            self._interrupt = True
            self._wake.notify_all()

    async def update_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Load once the running rows have finished; requests arriving meanwhile wait, so a
        sample never mixes versions."""
        loop = asyncio.get_running_loop()
        load = _Load(state, version, loop, loop.create_future())
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._loads.append(load)
            self._wake.notify_all()
        await load.future

    @contextlib.contextmanager
    def paused(self) -> Iterator[torch.nn.Module]:
        """The model, the caller's alone for the block: running rows finish first, requests
        arriving meanwhile wait. The caller may train it in place (then `mark_version`) and
        must leave it in eval mode."""
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._pause_requests += 1
            self._wake.notify_all()
            self._wake.wait_for(lambda: self._paused or self._closed)
        try:
            yield self._model
        finally:
            with self._wake:
                self._pause_requests -= 1
                self._wake.notify_all()

    def mark_version(self, version: int) -> None:
        """The weights now in the shared model are `version`; rows admitted from now on are
        stamped with it. Only inside `paused()`, when no row is running."""
        if not self._paused:
            raise RuntimeError("mark_version outside paused(): rows may be running")
        self._version = version

    async def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        await asyncio.to_thread(self._thread.join)
        self._model = None

    # ---- the scheduler thread ----

    def _serve(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(
                    lambda: (
                        self._closed
                        or self._interrupt
                        or self._loads
                        or self._pending
                        or self._rows
                        or self._pause_requests
                    )
                )
                if self._pending and not self._rows:
                    self._gather()
                if self._closed:
                    break
                if self._pause_requests and not self._rows:
                    self._hand_over()
                    continue
                interrupted, self._interrupt = self._interrupt, False
                aborted = self._pending if interrupted else []
                if interrupted:
                    self._pending = []
                load = self._loads.pop(0) if self._loads and not self._rows else None
                held = self._loads or load or self._pause_requests
                admitted = [] if held else self._take_pending()
            try:
                with torch.inference_mode():
                    self._step(interrupted, aborted, load, admitted)
            except Exception as exc:  # the batch is lost, the engine is not
                self._fail(admitted, exc)
        self._fail(self._pending + self._take_loads(), RuntimeError("the engine is closed"))

    def _hand_over(self) -> None:
        """Under `_wake`: let the pausing owners have the model until the last one is done."""
        self._paused = True
        self._wake.notify_all()
        self._wake.wait_for(lambda: not self._pause_requests or self._closed)
        self._paused = False

    def _gather(self) -> None:
        """Under `_wake`, no row running: wait for requests arriving together, until one
        window passes without a new one, the batch is full, or anything else needs serving."""
        window = self._settings.gather_window_s
        deadline = time.monotonic() + 10 * window
        while window > 0 and not (
            self._closed or self._interrupt or self._loads or self._pause_requests
        ):
            arrived = len(self._pending)
            left = deadline - time.monotonic()
            if left <= 0 or sum(r.n for r in self._pending) >= self._settings.max_batch_rows:
                return
            self._wake.wait(min(window, left))
            if len(self._pending) == arrived:
                return

    def _take_pending(self) -> list[_Request]:
        room = self._settings.max_batch_rows - len(self._rows)
        taken = []
        while self._pending and (self._pending[0].n <= room or not (taken or self._rows)):
            request = self._pending.pop(0)
            room -= request.n
            taken.append(request)
        return taken

    def _take_loads(self) -> list[_Load]:
        loads, self._loads = self._loads, []
        return loads

    def _step(
        self,
        interrupted: bool,
        aborted: list[_Request],
        load: _Load | None,
        admitted: list[_Request],
    ) -> None:
        for request in aborted:
            request.settle(
                [Completion([], [], EpisodeEnd.ABORT, []) for _ in range(request.n)], None
            )
        if interrupted:
            for row in self._rows:
                self._finish(row, EpisodeEnd.ABORT)
            self._retain([])
            self._deliver_complete()
        if load is not None:
            try:
                with torch.no_grad():
                    self._model.load_state_dict(dict(load.state), strict=True)
                self._version = load.version
                error = None
            except Exception as exc:
                error = exc
            _deliver(load.loop, load.future, None, error)
        if admitted:
            self._admit([r for r in admitted if not r.future.done()])
        if self._rows:
            self._sample_and_advance()

    def _fail(self, requests: list[Any], error: BaseException) -> None:
        """Fail what this step was serving (the running rows and the requests it admitted)."""
        doomed = {id(row.request): row.request for row in self._rows}
        doomed.update({id(item): item for item in requests})
        self._retain([])
        for item in doomed.values():
            if isinstance(item, _Load):
                _deliver(item.loop, item.future, None, error)
            else:
                item.settle(None, error)

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        out = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1].float()

    def _admit(self, requests: list[_Request]) -> None:
        """Prefill each new prompt once (left-padded), then merge its n rows into the batch."""
        if not requests:
            return
        self.prefills += 1
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.zeros(len(requests), width, dtype=torch.long)
        mask = torch.zeros(len(requests), width, dtype=torch.long)
        for i, request in enumerate(requests):
            ids[i, width - len(request.prompt_ids) :] = torch.tensor(request.prompt_ids)
            mask[i, width - len(request.prompt_ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self._model.config)
        logits = self._forward(ids, mask, positions, cache)
        expand = torch.tensor([i for i, r in enumerate(requests) for _ in range(r.n)])
        rows = [
            _Row(request, index, self._version, len(request.prompt_ids))
            for request in requests
            for index in range(request.n)
        ]
        if self._cache is None:
            self._cache = cache
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[expand], layer.values[expand]
            self._mask, self._logits = mask[expand], logits[expand]
        else:
            length = max(width, self._mask.shape[1])
            for old, new in zip(self._cache.layers, cache.layers, strict=True):
                old.keys = torch.cat(
                    [_left_pad(old.keys, length, -2), _left_pad(new.keys[expand], length, -2)]
                )
                old.values = torch.cat(
                    [_left_pad(old.values, length, -2), _left_pad(new.values[expand], length, -2)]
                )
            self._mask = torch.cat(
                [_left_pad(self._mask, length, -1), _left_pad(mask[expand], length, -1)]
            )
            self._logits = torch.cat([self._logits, logits[expand]])
        self._rows += rows

    def _sample_and_advance(self) -> None:
        # Rows whose caller gave up (cancelled) stop here.
        self._retain([i for i, row in enumerate(self._rows) if not row.request.future.done()])
        rows = self._rows
        if not rows:
            return
        self.peak_rows = max(self.peak_rows, len(rows))
        self.peak_requests = max(self.peak_requests, len({id(row.request) for row in rows}))
        # The processed logits HF generate would return as scores: temperature, then top-p.
        temperature = torch.tensor([[row.request.settings.temperature] for row in rows])
        scores = self._logits / temperature
        top_p = torch.tensor([[row.request.settings.top_p] for row in rows])
        if bool((top_p < 1).any()):
            ordered, order = torch.sort(scores, descending=False)
            drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
            drop[:, -1:] = False
            scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        logprobs = scores.log_softmax(dim=-1)
        # Inverse-CDF sampling with one uniform per sample of a request and step, drawn even
        # for its finished rows: a row's draws depend neither on its batch-mates nor on when
        # its siblings stop.
        uniforms = torch.empty(len(rows))
        by_request: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            by_request.setdefault(id(row.request), []).append(i)
        for indices in by_request.values():
            request = rows[indices[0]].request
            draws = torch.rand(request.n, generator=request.generator)
            uniforms[indices] = draws[[rows[i].index for i in indices]]
        cdf = logprobs.exp().cumsum(dim=-1)
        targets = (uniforms.unsqueeze(1) * cdf[:, -1:]).contiguous()
        tokens = torch.searchsorted(cdf, targets, right=True).squeeze(1)
        sampled = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
        keep = []
        for i, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            row.tokens.append(token)
            row.logprobs.append(sampled[i])
            request = row.request
            stop_strings = request.stop_strings
            if token in request.stop_ids or (
                stop_strings is not None and stop_strings.matched(row.tokens)
            ):
                self._finish(row, EpisodeEnd.STOP)
            elif len(row.tokens) >= request.settings.max_new_tokens:
                self._finish(row, EpisodeEnd.LENGTH)
            else:
                keep.append(i)
        fed = tokens[keep].unsqueeze(1)
        self._retain(keep)
        self._deliver_complete()
        if not self._rows:
            return
        assert self._cache is not None
        positions = torch.tensor([[row.position] for row in self._rows])
        for row in self._rows:
            row.position += 1
        self._mask = torch.cat([self._mask, torch.ones(len(self._rows), 1, dtype=torch.long)], 1)
        self._logits = self._forward(fed, self._mask, positions, self._cache)

    def _retain(self, keep: list[int]) -> None:
        """Keep only rows `keep` of the batch, and drop cache columns no row attends to."""
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache = [], None
            self._mask, self._logits = torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0)
            return
        index = torch.tensor(keep)
        mask = self._mask[index]
        first = int(mask.any(dim=0).long().argmax())
        mask = mask[:, first:]
        assert self._cache is not None
        for layer in self._cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self._rows = [self._rows[i] for i in keep]
        self._mask, self._logits = mask, self._logits[index]

    def _finish(self, row: _Row, reason: EpisodeEnd) -> None:
        request = row.request
        request.completions[row.index] = Completion(
            token_ids=row.tokens,
            logprobs=row.logprobs,
            finish_reason=reason,
            versions=[row.version] * len(row.tokens),
        )
        if all(c is not None for c in request.completions):
            self._complete.append(request)

    def _deliver_complete(self) -> None:
        """Hand finished requests back once their rows have left the batch."""
        complete, self._complete = self._complete, []
        for request in complete:
            request.settle(list(request.completions), None)  # type: ignore[arg-type]
