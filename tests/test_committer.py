"""Hashing on the commit thread changes no bit and loses no error (engine/committer.py).

The executor hands each step's hashing to a thread of its own only where a core is free and a
position's outputs are large (a 134M model and up), so these tests force it on the tiny models:
a backend that says a core is free, and no size threshold."""

from __future__ import annotations

import threading

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refute.engine import committer, merkle
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request, _hash_serially
from refute.errors import CommitmentError
from refute.kernels.cpu import CPUBackend, backend, sha256

MODELS = {name: load_model(name) for name in ("tiny-llama", "tiny-gpt2")}
WANT: dict[tuple, tuple] = {}  # (model, request) -> (trace roots, tokens) of the reference

pytestmark = pytest.mark.skipif(bool(sha256.UNAVAILABLE), reason=sha256.UNAVAILABLE or "-")


class SpareCore(CPUBackend):
    """The CPU backend on a machine with a core to spare, whatever this one has."""

    def leaves_a_core(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def any_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(committer, "BACKGROUND_MIN_CHUNKS", 0)


def reference(name: str, request: Request) -> tuple:
    key = (name, request)
    if key not in WANT:
        (gen,) = Executor(MODELS[name]).generate([request])
        WANT[key] = ([list(r) for r in gen.trace.roots], gen.trace.root(), gen.output_tokens)
    return WANT[key]


def outcome(gen) -> tuple:
    return ([list(r) for r in gen.trace.roots], gen.trace.root(), gen.output_tokens)


requests = st.builds(
    Request,
    prompt=st.lists(st.integers(0, 319), min_size=1, max_size=6).map(tuple),
    max_new_tokens=st.integers(1, 5),
    temperature=st.sampled_from([0.0, 0.9]),
    seed=st.integers(0, 2**64),
)


@settings(max_examples=20)
@given(name=st.sampled_from(sorted(MODELS)), batch=st.lists(requests, min_size=1, max_size=3),
       prefill=st.booleans())  # fmt: skip
def test_roots_hashed_on_the_commit_thread_equal_the_reference(name, batch, prefill) -> None:
    ex = Executor(MODELS[name], backend=SpareCore())
    gens = ex.generate(batch, prefill=prefill)
    for request, gen in zip(batch, gens, strict=True):
        assert outcome(gen) == reference(name, request)
    assert ex.seconds["commit_background"] > 0  # the hashing did run on the thread


def test_the_jobs_run_on_one_thread_that_hashes_serially(monkeypatch) -> None:
    request = Request((5, 6, 7), 4)
    want = reference("tiny-llama", request)
    seen: list[tuple[str, int]] = []
    real = merkle.tensor_roots

    def spy(tensors):
        seen.append((threading.current_thread().name, numba.get_num_threads()))
        return real(tensors)

    monkeypatch.setattr(merkle, "tensor_roots", spy)
    before = numba.get_num_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)  # all of them, on this thread
    try:
        (gen,) = Executor(MODELS["tiny-llama"], backend=SpareCore()).generate([request])
    finally:
        numba.set_num_threads(before)
    assert outcome(gen) == want
    threads = {name for name, _ in seen}
    assert len(threads) == 1 and threads.pop().startswith("refute-commit")
    assert {n for _, n in seen} == {1}  # numba's thread count is that thread's own


def test_without_a_spare_core_the_hashing_stays_inline(monkeypatch) -> None:
    cpu = CPUBackend()
    request = Request((1, 2), 3)
    ex = Executor(MODELS["tiny-llama"], backend=cpu)
    monkeypatch.setattr(backend, "CPUS", numba.get_num_threads())
    (gen,) = ex.generate([request])
    assert not cpu.leaves_a_core() and ex.seconds["commit_background"] == 0
    assert outcome(gen) == reference("tiny-llama", request)
    monkeypatch.setattr(backend, "CPUS", numba.get_num_threads() + 1)
    assert cpu.leaves_a_core()
    assert CPUBackend(parallel=False).leaves_a_core() is False  # kernels not loaded yet


def test_a_failed_hash_is_raised_by_generate_and_the_executor_goes_on(monkeypatch) -> None:
    real, calls = merkle.tensor_roots, []

    def flaky(tensors):
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            raise CommitmentError("injected")
        return real(tensors)

    request = Request((3, 1, 4), 6)
    want = reference("tiny-llama", request)
    monkeypatch.setattr(merkle, "tensor_roots", flaky)
    ex = Executor(MODELS["tiny-llama"], backend=SpareCore())
    with pytest.raises(CommitmentError, match="injected"):
        ex.generate([request])
    assert calls[2].startswith("refute-commit")
    (gen,) = ex.generate([request])  # the next call starts clean
    assert outcome(gen) == want


def test_an_evaluation_error_waits_for_the_hashing_and_keeps_its_own_error(monkeypatch) -> None:
    ex = Executor(MODELS["tiny-llama"], backend=SpareCore())
    started = threading.Event()
    real = merkle.tensor_roots

    def slow(tensors):
        started.set()
        threading.Event().wait(0.05)
        raise CommitmentError("the hashing's")

    evaluate = ex._evaluate

    def failing(rows, record):
        if started.is_set():
            raise ValueError("the evaluation's")
        return evaluate(rows, record)

    monkeypatch.setattr(merkle, "tensor_roots", slow)
    monkeypatch.setattr(ex, "_evaluate", failing)
    with pytest.raises(ValueError, match="evaluation's"):
        ex.generate([Request((1, 2, 3), 8)])
    assert [t.name for t in threading.enumerate() if t.name.startswith("refute-commit")] == []
    monkeypatch.setattr(merkle, "tensor_roots", real)
    monkeypatch.setattr(ex, "_evaluate", evaluate)
    (gen,) = ex.generate([Request((1, 2, 3), 2)])
    assert outcome(gen) == reference("tiny-llama", Request((1, 2, 3), 2))


def test_generations_on_two_threads_share_an_executor() -> None:
    """`--workers 2` runs two jobs on one executor at once: each call has its own commit jobs."""
    ex = Executor(MODELS["tiny-gpt2"], backend=SpareCore())
    batches = [[Request((i, 2 * i + 1), 4 + i)] for i in range(1, 5)]
    got: dict[int, tuple] = {}

    def work(i: int) -> None:
        for _ in range(2):
            got[i] = outcome(ex.generate(batches[i])[0])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, batch in enumerate(batches):
        assert got[i] == reference("tiny-gpt2", batch[0])


@pytest.mark.parametrize("name", ["layers.1.mlp.down", "layers.1.attn.k_cache"])
def test_a_cheating_trace_differs_from_the_first_tampered_record(name: str) -> None:
    model = MODELS["tiny-llama"]
    node = model.program.node_index(name)

    def tamper(t: int, n: int, out: np.ndarray) -> np.ndarray:
        if (t, n) != (3, node):
            return out
        bad = out.copy()
        bad.view(np.uint32)[0] ^= 1
        return bad

    request = Request((9, 8, 7), 4)
    want = Executor(model, tamper=tamper).generate([request])[0]
    got = Executor(model, backend=SpareCore(), tamper=tamper).generate([request])[0]
    honest = Executor(model).generate([request])[0]
    assert outcome(got) == outcome(want)
    assert got.trace.first_difference(honest.trace) == (3, node)


# --- the Committer itself -----------------------------------------------------------------------


def test_jobs_run_in_order_across_the_thread_and_inline() -> None:
    done: list[int] = []
    c = committer.Committer()
    for i in range(12):
        c.submit(lambda i=i: done.append(i), background=i % 3 != 2)
    c.close()
    assert done == list(range(12))


def test_at_most_ahead_jobs_wait_behind_the_submitter() -> None:
    gate, running = threading.Event(), threading.Event()
    c = committer.Committer()
    c.submit(lambda: (running.set(), gate.wait()), background=True)
    running.wait()
    for _ in range(committer.AHEAD - 1):
        c.submit(lambda: None, background=True)  # queued behind the blocked one
    blocked = threading.Thread(target=c.submit, args=(lambda: None, True))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # the submitter waits: outputs do not pile up in memory
    gate.set()
    blocked.join(5)
    assert not blocked.is_alive()
    c.close()


def test_a_failed_job_stops_the_ones_after_it() -> None:
    done: list[int] = []
    c = committer.Committer()
    gate = threading.Event()
    c.submit(lambda: (gate.wait(), done.append(0)), background=True)

    def fail() -> None:
        raise CommitmentError("job 1")

    c.submit(fail, background=True)
    gate.set()
    with pytest.raises(CommitmentError, match="job 1"):
        for _ in range(50):  # raised by a later submit, once the failure is known
            c.submit(lambda: done.append(2), background=True)
            threading.Event().wait(0.01)
    with pytest.raises(CommitmentError):
        c.submit(lambda: done.append(3), background=False)
    c.close(discard=True)
    assert done == [0]
    c.close()  # the error was handed over once


def test_close_raises_the_error_and_stops_the_thread() -> None:
    c = committer.Committer(setup=_hash_serially)

    def fail() -> None:
        raise CommitmentError("late")

    c.submit(fail, background=True)
    with pytest.raises(CommitmentError, match="late"):
        c.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("refute-commit")]
