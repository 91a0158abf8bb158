"""Uploads to predictions: decoded in a thread pool, classified in forward passes shared across requests.

Each upload goes to a thread pool, where its header is read and the image is admitted to the
:class:`PixelBudget` for its decoded size (first come, first served), then decoded and preprocessed
in parallel with the forward passes (Pillow, OpenCV and onnxruntime release the GIL). It holds its
share of the budget until its forward pass is done, so neither decoded images nor preprocessed
ones waiting for a pass grow without bound. The :class:`Batcher`'s threads run the forward passes:
each takes up to ``batch_size`` images queued by any request, and waits at most ``wait_s`` for more
only while other images are still being decoded, so a lone request is never held back.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import numpy as np
from PIL import Image

from abcd.core.preprocess import aspect_problem
from abcd.data.images import ImageError
from abcd.inference.pipeline import ModelRuntime, Prediction, decode_upload, predict_batch
from abcd.serving.limits import PixelBudget

# Pillow names the stream it was given (an object address): noise for the client.
_STREAM = re.compile(r" <[\w.]+ object at 0x[0-9a-fA-F]+>")


class Batcher:
    """``threads`` threads running forward passes over images queued from any request.

    Two by default: onnxruntime's threads wait for the slowest of them at the end of each layer, and
    with a second pass running the cores have work meanwhile (benchmarks/deploy.py, on 2 shared cores:
    32 clients got 0.96-1.43 of the in-process ceiling with two, 0.84-1.06 with one)."""

    def __init__(self, runtime: ModelRuntime, batch_size: int, wait_s: float, threads: int = 2) -> None:
        self.runtime, self.batch_size, self.wait_s, self.threads = runtime, batch_size, wait_s, threads
        self._queue: deque[tuple[np.ndarray, Future[Prediction]]] = deque()
        self._cond = threading.Condition()
        self._coming = 0  # images being decoded: worth a short wait to share a pass
        self._running: list[threading.Thread] = []
        self._closed = False
        self.passes = self.images = 0  # served so far: their ratio is the mean batch

    def expect(self, n: int) -> None:
        """``n`` images are on their way (decoding): while any is, a pass waits up to ``wait_s`` for them."""
        with self._cond:
            self._coming += n

    def arrived(self) -> None:
        """One expected image is queued, or will not come (not an image)."""
        with self._cond:
            self._coming -= 1
            self._cond.notify()

    def submit(self, x: np.ndarray) -> Future[Prediction]:
        """Queue one preprocessed image (3, S, S); the future holds its prediction."""
        done: Future[Prediction] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the service is shutting down")
            if not self._running:
                for _ in range(self.threads):
                    self._running.append(threading.Thread(target=self._run, name="forward", daemon=True))
                    self._running[-1].start()
            self._queue.append((x, done))
            self._cond.notify()
        return done

    def _take(self) -> list[tuple[np.ndarray, Future[Prediction]]]:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            deadline = time.monotonic() + self.wait_s
            while 0 < len(self._queue) < self.batch_size and self._coming and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    break
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            self.passes, self.images = self.passes + bool(batch), self.images + len(batch)
            return batch

    def _run(self) -> None:
        while batch := self._take():
            try:
                found = predict_batch(self.runtime, np.stack([x for x, _ in batch]))
            except Exception as err:  # a broken model fails these requests (500), not the thread
                for _, done in batch:
                    done.set_exception(err)
                continue
            for (_, done), prediction in zip(batch, found):
                done.set_result(prediction)

    def close(self) -> None:
        """Run what is queued, then stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._running:
            thread.join()


class Inference:
    """Uploaded files to predictions under the pixel budget, with the decode pool and the :class:`Batcher`."""

    def __init__(
        self,
        runtime: ModelRuntime,
        *,
        max_pixels: int | None,
        pixels_in_flight: int,
        batch_size: int,
        wait_s: float,
        threads: int,
        input_size: int,
    ) -> None:
        self.runtime, self.max_pixels = runtime, max_pixels
        self.budget = PixelBudget(pixels_in_flight)
        self.batcher = Batcher(runtime, batch_size, wait_s)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")
        self.input_size = input_size
        # A preprocessed image waiting for its pass is float32: as much memory as 4 decoded pixels.
        self.input_pixels = 4 * input_size * input_size

    def pixels(self, file: BinaryIO) -> int:
        """The budget an upload is charged: its decoded size from the header, at least the model input's;
        nothing for a file the decoder refuses from its header alone (not an image, over a limit)."""
        try:
            file.seek(0)
            with Image.open(file) as img:
                width, height = img.size
        except Exception:  # untrusted bytes: the decode says what is wrong with them
            return 0
        if (self.max_pixels is not None and width * height > self.max_pixels) or aspect_problem(width, height):
            return 0
        return max(width * height, self.input_pixels)

    def prepare(self, file: BinaryIO) -> np.ndarray | str:
        """The preprocessed image (3, S, S), or why the file cannot be used."""
        if file.seek(0, io.SEEK_END) == 0:
            return "empty file"
        file.seek(0)
        try:
            return self.runtime.preprocess(decode_upload(file, self.max_pixels))
        except ImageError as err:
            return _STREAM.sub("", err.reason)

    def _work(self, file: BinaryIO) -> Future[Prediction] | str:
        """In a decode thread: admit the file to the budget, decode it and queue it for a forward pass;
        the budget is released when the pass is done (or at once for a file that is no image)."""
        try:
            claim = self.budget.acquire(self.pixels(file))
            done: Future[Prediction] | str = "not classified"
            try:
                x = self.prepare(file)
                done = x if isinstance(x, str) else self.batcher.submit(x)
            finally:
                if isinstance(done, Future):
                    done.add_done_callback(lambda _: self.budget.release(claim))
                else:
                    self.budget.release(claim)
        finally:
            self.batcher.arrived()
        return done

    async def classify(self, files: Sequence[BinaryIO]) -> list[Prediction | str]:
        """One prediction, or the reason there is none, per file."""
        self.batcher.expect(len(files))
        work = [asyncio.wrap_future(self.pool.submit(self._work, file)) for file in files]
        out: list[Prediction | str] = []
        for queued in work:
            done = await queued
            out.append(done if isinstance(done, str) else await asyncio.wrap_future(done))
        return out

    def warm_up(self) -> None:
        """A forward pass at batch 1 and at the full batch, so the first requests do not pay for them."""
        for n in (1, self.batcher.batch_size):
            predict_batch(self.runtime, np.zeros((n, 3, self.input_size, self.input_size), np.float32))

    def close(self) -> None:
        """Finish the decodes under way (queued ones are dropped), then the forward passes they queued."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.batcher.close()
