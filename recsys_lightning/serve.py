"""`recsys-lightning serve`: a LitServe HTTP server over a `Recommender`: recommend, score, rate and explain as JSON
endpoints (recommend batched across concurrent requests), LitServe's /health and /info, bad requests answered 4xx."""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation at run time as the request body
# model FastAPI validates, so annotations must be classes, not strings.

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from abc import abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import litserve as ls
except ImportError as err:  # an optional extra: say how to install it
    raise ImportError("recsys-lightning serve needs LitServe: pip install 'recsys-lightning[serve]'") from err
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, model_validator

from recsys_lightning.errors import UnknownIdError
from recsys_lightning.recommender import Recommender

ENDPOINTS = ("recommend", "score", "rate", "explain")


class Body(BaseModel):
    """A request body: FastAPI answers malformed JSON, a missing field, a wrong type or an unknown field with 422."""

    model_config = ConfigDict(extra="forbid")


class RecommendBody(Body):
    """POST /recommend: a known user's id, or the item ids a user (new to the model) interacted with, oldest first."""

    user: str | None = None
    history: list[str] | None = None
    k: int = 10
    exclude_seen: bool = True

    @model_validator(mode="after")
    def user_or_history(self) -> "RecommendBody":
        if self.user is None and self.history is None:
            raise ValueError("give `user` (a known user id) or `history` (a list of item ids)")
        return self


class ScoreBody(Body):
    """POST /score: the log-probability of each of `items` as the user's next item."""

    user: str
    items: list[str]


class PairBody(Body):
    """POST /rate and POST /explain: one user and one item."""

    user: str
    item: str


def load_recommender(model: Path, device: str) -> Recommender:
    """An exported folder (`recsys-lightning export`) or a fit checkpoint file, on `device`."""
    return Recommender.from_pretrained(model, device=device) if model.is_dir() \
        else Recommender.from_checkpoint(model, device=device)


def refusal(err: Exception) -> JSONResponse:
    """A request the recommender refused, answered as FastAPI answers an HTTPException: {"detail": message}, with 404
    for an unknown user or item id and 400 for a bad value (k out of range, a family the model was not trained with)."""
    message = str(err.args[0]) if err.args else type(err).__name__
    return JSONResponse({"detail": message}, status_code=404 if isinstance(err, UnknownIdError) else 400)


def attempt(call: Callable[[], Any]) -> Any:
    """`call()`'s result, or the UnknownIdError / ValueError it raised (a refused request, answered 4xx)."""
    try:
        return call()
    except (UnknownIdError, ValueError) as err:
        return err


class RecommenderAPI(ls.LitAPI):
    """One endpoint over a Recommender loaded once per worker; each request answers alone, even inside a batch (LitServe
    fails a whole batch on one exception, so refused requests travel as values and become 4xx in encode_response)."""

    name = ""

    def __init__(self, model: Path, **kwargs: Any) -> None:
        super().__init__(api_path=f"/{self.name}", **kwargs)
        self.model = model
        self.recommender: Recommender | None = None

    def setup(self, device: str) -> None:
        self.recommender = load_recommender(self.model, device)

    def predict(self, x: Any) -> Any:
        if self.max_batch_size == 1:
            return self.answer([x])[0]
        return self.answer(x)

    def answer(self, requests: list[Any]) -> list[Any]:
        """One JSON-ready answer (or refusal) per request, in order."""
        return [attempt(lambda r=r: self.answer_one(r)) for r in requests]

    @abstractmethod
    def answer_one(self, request: Any) -> dict[str, Any]:
        """The endpoint's JSON answer to one validated request."""

    def encode_response(self, output: Any) -> Response:
        return refusal(output) if isinstance(output, Exception) else JSONResponse(output)


def finite(value: float) -> float | None:
    """A float as JSON can carry it: NaN or infinity becomes null (JSON has neither)."""
    return value if math.isfinite(value) else None


def ranked(items: list[tuple[str, float]]) -> dict[str, Any]:
    """Recommended (item, score) pairs as /recommend answers them, the shape of predictions.jsonl's `items`."""
    return {"items": [{"item": item, "score": finite(score)} for item, score in items]}


class RecommendAPI(RecommenderAPI):
    """POST /recommend -> {"items": [{"item": id, "score": log-probability}, ...]}, best first. Concurrent requests
    with the same k and exclude_seen are decoded together by `Recommender.recommend_batch`."""

    name = "recommend"

    def decode_request(self, request: RecommendBody) -> RecommendBody:
        return request

    def answer(self, requests: list[RecommendBody]) -> list[Any]:
        """One recommend_batch per (k, exclude_seen, user or history) group of the batch; a group with a refused
        request in it answers each of its requests alone, so only that one is refused."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[(r.k, r.exclude_seen, r.user is not None, r.history is not None)].append(i)
        answers: list[Any] = [None] * len(requests)
        for (k, exclude_seen, by_user, by_history), rows in groups.items():
            batch = [requests[i] for i in rows]
            results = attempt(lambda: self.recommender.recommend_batch(
                users=[r.user for r in batch] if by_user else None,
                histories=[r.history for r in batch] if by_history else None, k=k, exclude_seen=exclude_seen))
            if isinstance(results, Exception):  # some request of the group was refused: answer each alone
                results = [attempt(lambda r=r: self.answer_one(r)) for r in batch]
            for i, result in zip(rows, results):
                answers[i] = result if isinstance(result, (Exception, dict)) else ranked(result)
        return answers

    def answer_one(self, request: RecommendBody) -> dict[str, Any]:
        return ranked(self.recommender.recommend(user=request.user, history=request.history, k=request.k,
                                                 exclude_seen=request.exclude_seen))


class ScoreAPI(RecommenderAPI):
    """POST /score -> {"scores": [log-probability of each item, in the request's order]}."""

    name = "score"

    def decode_request(self, request: ScoreBody) -> ScoreBody:
        return request

    def answer_one(self, request: ScoreBody) -> dict[str, Any]:
        return {"scores": [finite(s) for s in self.recommender.score(request.user, request.items)]}


class RateAPI(RecommenderAPI):
    """POST /rate -> {"rating": the rating family's prediction, null where free decoding gave no rating}."""

    name = "rate"

    def decode_request(self, request: PairBody) -> PairBody:
        return request

    def answer_one(self, request: PairBody) -> dict[str, Any]:
        return {"rating": finite(self.recommender.rate(request.user, request.item))}


class ExplainAPI(RecommenderAPI):
    """POST /explain -> {"explanation": the explanation family's generated text}."""

    name = "explain"

    def decode_request(self, request: PairBody) -> PairBody:
        return request

    def answer_one(self, request: PairBody) -> dict[str, Any]:
        return {"explanation": self.recommender.explain(request.user, request.item)}


APIS: dict[str, type[RecommenderAPI]] = {api.name: api for api in (RecommendAPI, ScoreAPI, RateAPI, ExplainAPI)}


def build_server(model: Path, endpoints: Sequence[str] = ENDPOINTS, max_batch_size: int = 8,
                 batch_timeout: float = 0.005, **server: Any) -> ls.LitServer:
    """A LitServer with one LitAPI per endpoint (each with its own worker processes and model copy); only /recommend
    batches (`max_batch_size` requests, waiting up to `batch_timeout` seconds for a batch to fill)."""
    apis = [APIS[name](model, max_batch_size=max_batch_size, batch_timeout=batch_timeout) if name == "recommend"
            else APIS[name](model) for name in endpoints]
    metadata = {"model": str(model), "endpoints": [f"/{name}" for name in endpoints]}
    return ls.LitServer(apis, model_metadata=metadata, **server)


def devices(value: str) -> int | str:
    """--devices: `auto` or a positive integer."""
    if value == "auto" or (value.isdigit() and int(value) > 0):
        return value if value == "auto" else int(value)
    raise argparse.ArgumentTypeError(f"expected auto or a positive integer, got {value!r}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="recsys-lightning serve", description=serve_command.__doc__)
    parser.add_argument("--model", required=True, type=Path,
                        help="a `recsys-lightning export` folder, or a checkpoint file written by `fit`")
    parser.add_argument("--host", default="127.0.0.1", choices=("127.0.0.1", "0.0.0.0", "::"),
                        help="127.0.0.1: this machine only; 0.0.0.0 or ::, every interface")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS),
                        help="which endpoints to serve (each loads its own copy of the model)")
    parser.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--devices", default="auto", type=devices, help="how many devices: an integer, or auto")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per device and endpoint")
    parser.add_argument("--max_batch_size", type=int, default=8, help="most /recommend requests decoded together")
    parser.add_argument("--batch_timeout", type=float, default=0.005,
                        help="seconds a /recommend batch waits to fill")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait for its answer")
    parser.add_argument("--api_servers", type=int, default=1, help="HTTP server processes")
    parser.add_argument("--log_level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return parser.parse_args(argv)


def stop_on_sigterm() -> None:
    """SIGTERM (what `kill`, Docker and Kubernetes send) shuts down as Ctrl+C does: LitServe then stops its HTTP
    servers and workers instead of leaving them behind."""
    main_pid = os.getpid()

    def interrupt(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:  # an HTTP server process forked from this one: the default, as uvicorn expects
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def serve_command(argv: Sequence[str]) -> None:
    """Serve a trained recommender over HTTP with LitServe: POST /recommend, /score, /rate, /explain; GET /health."""
    args = parse_args(argv)
    if not args.model.exists():
        raise FileNotFoundError(f"--model {args.model}: no such export folder or checkpoint file")
    if args.max_batch_size < 1 or args.workers < 1 or args.api_servers < 1:
        raise ValueError("--max_batch_size, --workers and --api_servers must each be at least 1")
    endpoints = list(dict.fromkeys(args.endpoints))  # each once
    server = build_server(args.model.resolve(), endpoints, args.max_batch_size, args.batch_timeout,
                          accelerator=args.accelerator, devices=args.devices, workers_per_device=args.workers,
                          timeout=args.timeout)
    stop_on_sigterm()
    server.run(host=args.host, port=args.port, num_api_servers=args.api_servers, log_level=args.log_level,
               generate_client_file=False)


@dataclass
class ServerProcess:
    """A `recsys-lightning serve` child process and the base URL it answers on."""

    url: str
    process: subprocess.Popen


def free_port() -> int:
    """A local TCP port no one listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(model: Path, *options: str, log: Path | None = None, startup_timeout: float = 300.0
                   ) -> Iterator[ServerProcess]:
    """`serve --model model *options` on a free local port in its own process group (for tests and benchmarks),
    yielded once GET /health answers 200, and stopped with SIGTERM (then SIGKILL to the group) on exit."""
    port = free_port()
    command = [sys.executable, "-m", "recsys_lightning.serve", "--model", str(model), "--port", str(port), *options]
    with open(log or os.devnull, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = ServerProcess(f"http://127.0.0.1:{port}", process)
    try:
        wait_healthy(server, startup_timeout, log)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_healthy(server: ServerProcess, timeout: float, log: Path | None) -> None:
    """Poll GET /health until it answers 200; a server that exits or stays unready that long is an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.is_file() else ""
            raise RuntimeError(f"the server exited with status {server.process.returncode} before it was ready"
                               + (f"; its log ends:\n{tail}" if tail else ""))
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:  # not listening yet, or 503 while its workers load the model
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the server at {server.url} was not ready within {timeout:.0f} s")


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m recsys_lightning.serve ...`: serve_command with the CLI's one-line errors."""
    from recsys_lightning.report import report_errors
    report_errors(lambda: serve_command(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
