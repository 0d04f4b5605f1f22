"""Dynamic batching: requests that arrive close together run as one encoder call, so 32 clients sending one text
each cost about what one 32-text call costs.

One thread owns the classifier and runs batches one after another (a single call already uses every core); the event
loop only queues requests and awaits their answers. A batch starts with the oldest waiting request and takes the
next ones in arrival order while their tokens fit `batch_tokens`, waiting at most `max_wait` after the first one
arrived for more to come. A text's answer is computed by the same `Classifier.embed` and head as `predict`'s. At most
`max_queue` requests wait or run at once; one more is refused (QueueFull: the app answers 503) instead of letting the
queue, and every latency, grow without limit.
"""

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import first_line
from pipeline.predict import Classifier
from pipeline.serve.metrics import Metrics

log = logging.getLogger("pipeline.serve")
STOP = object()  # put on the queue to end the thread once the requests before it are answered


class QueueFull(Exception):
    """More requests waiting than --max-queue allows."""


@dataclass(frozen=True)
class Scored:
    """One request's answer: the vectors the head read and its probabilities, a row per text in input order."""

    vectors: np.ndarray
    proba: np.ndarray


@dataclass
class Job:
    texts: list[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.perf_counter)
    tokens: int = 0

    def settle(self, result: Scored | None, error: BaseException | None = None) -> None:
        """Hand the answer to the request's event loop (a request that went away meanwhile is skipped)."""
        self.loop.call_soon_threadsafe(_settle, self.future, result, error)


def _settle(future: asyncio.Future, result: Scored | None, error: BaseException | None) -> None:
    if future.done():  # cancelled: the client left or the grace period ended
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    def __init__(self, clf: Classifier, metrics: Metrics, batch_tokens: int = 8192, max_wait: float = 0.002,
                 max_queue: int = 256) -> None:
        self.clf, self.metrics = clf, metrics
        self.batch_tokens, self.max_wait, self.max_queue = batch_tokens, max_wait, max_queue
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._count, self._count_lock = 0, threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    async def submit(self, texts: list[str]) -> Scored:
        """The answer for `texts`, once their batch ran; QueueFull when max_queue requests are already taken."""
        with self._count_lock:
            if self._count >= self.max_queue:
                raise QueueFull(f"{self._count} requests are queued (--max-queue {self.max_queue})")
            self._count += 1
        self.metrics.queued.inc()
        loop = asyncio.get_running_loop()
        job = Job(texts, loop.create_future(), loop)
        self._jobs.put(job)
        try:
            return await job.future
        finally:
            with self._count_lock:
                self._count -= 1
            self.metrics.queued.dec()

    def stop(self, timeout: float) -> None:
        """Answer what is queued, then end the thread (waiting at most `timeout` seconds for it)."""
        self._jobs.put(STOP)
        self._thread.join(timeout)

    def _loop(self) -> None:
        carry = None
        while True:
            first = carry if carry is not None else self._jobs.get()
            if first is STOP:
                return
            batch, carry = self._gather(first)
            self._run(batch)
            if carry is STOP:
                return

    def _gather(self, first: Job) -> tuple[list[Job], Job | None]:
        """`first` and the requests after it that fit the token budget, waiting until max_wait after `first`
        arrived; the request that did not fit (or STOP) is returned to start the next round."""
        batch, tokens = [first], self._count_tokens(first)
        deadline = first.arrived + self.max_wait
        while tokens < self.batch_tokens:
            try:
                job = self._jobs.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if job is STOP or tokens + self._count_tokens(job) > self.batch_tokens:
                return batch, job
            batch.append(job)
            tokens += job.tokens
        return batch, None

    def _count_tokens(self, job: Job) -> int:
        """The request's tokens (once per request); its characters if it cannot be tokenised, so that it still
        runs, and fails, as a request of its own rather than stopping this thread."""
        if not job.tokens:
            start = time.perf_counter()
            try:
                job.tokens = int(self.clf.token_counts(job.texts).sum())
            except Exception:
                job.tokens = sum(map(len, job.texts))
            self.metrics.tokenize_seconds.observe(time.perf_counter() - start)
        return job.tokens

    def _run(self, batch: list[Job]) -> None:
        """One encoder call for the whole batch, answers split back per request. If it fails, each request runs
        alone, so that one request's failure is its own and not its batch mates'."""
        batch = [job for job in batch if not job.future.cancelled()]  # gone: the client left, or --grace ran out
        if not batch:
            return
        start = time.perf_counter()
        for job in batch:
            self.metrics.queue_seconds.observe(start - job.arrived)
        texts = [text for job in batch for text in job.texts]
        try:
            scored = self._score(texts)
        except Exception as exc:
            if len(batch) > 1:
                for job in batch:
                    self._run([job])
                return
            log.error("a batch failed: %s: %s", type(exc).__name__, first_line(exc))
            batch[0].settle(None, exc)
            return
        self.metrics.inference_seconds.observe(time.perf_counter() - start)
        self.metrics.batch_texts.observe(len(texts))
        self.metrics.batch_requests.observe(len(batch))
        self.metrics.texts.inc(len(texts))
        offsets = np.cumsum([0, *(len(job.texts) for job in batch)])
        for job, a, b in zip(batch, offsets[:-1], offsets[1:], strict=True):
            job.settle(Scored(scored.vectors[a:b], scored.proba[a:b]))

    def _score(self, texts: list[str]) -> Scored:
        vectors = self.clf.embed(texts)
        return Scored(vectors, self.clf.head_proba(vectors))
