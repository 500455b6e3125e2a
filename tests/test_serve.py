"""`recsys-lightning serve` end to end: a tiny model fit on a slice of the demo data and exported, served by LitServe
in a child process, asked over loopback HTTP; answers equal the in-process Recommender's, bad requests get a 4xx
with their reason, and SIGTERM stops every process of the server."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from recsys_lightning.builtin import builtin_dir
from recsys_lightning.cli import main
from recsys_lightning.recommender import Recommender
from recsys_lightning.serve import RecommendAPI, RecommendBody, main as serve_main, running_server
from tests.conftest import ONE_EPOCH

# sequential and rating only: /explain asks for a family the model was not trained with
TASKS = json.dumps([{"name": "sequential"}, {"name": "rating", "max_eval_requests": 8}])
TINY = ["--model.backbone.init_args.hidden_size", "32", "--model.backbone.init_args.num_layers", "1",
        "--model.backbone.init_args.num_attention_heads", "2", "--data.vocab_size", "300", "--data.batch_size", "16",
        "--data.eval_batch_size", "32", "--model.beam_size", "10", *ONE_EPOCH, "--trainer.limit_train_batches", "4",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false", "--data.tasks", TASKS,
        "--checkpoint.monitor", "val/sequential/ndcg@10"]


def fit_and_export(tmp: Path, root: Path) -> Path:
    """A tiny model fit in seconds on `root`, exported to tmp/export."""
    main(["fit", "--config", str(builtin_dir("lightning_configs") / "demo.yaml"), *TINY, "--data.root", str(root),
          "--trainer.default_root_dir", str(tmp), "--trainer.logger.init_args.save_dir", str(tmp / "logs"),
          "--data.cache_dir", str(tmp / "cache"), "--checkpoint.dirpath", str(tmp / "ckpt")])
    main(["export", "--ckpt_path", str(tmp / "ckpt" / "last.ckpt"), "--out", str(tmp / "export")])
    return tmp / "export"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_reviews) -> Path:
    return fit_and_export(tmp_path_factory.mktemp("serve"), tiny_reviews)


@pytest.fixture(scope="module")
def recommender(exported) -> Recommender:
    return Recommender.from_pretrained(exported)


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):  # tests that take it are slow: a server of several processes starts
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    with running_server(exported, "--log_level", "warning", "--max_batch_size", "8", "--batch_timeout", "0.05",
                        log=log) as running:
        yield running


def post(server, endpoint: str, body) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(f"{server.url}/{endpoint}", content=content, headers={"Content-Type": "application/json"},
                      timeout=60)


def items(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [entry["item"] for entry in answer.json()["items"]]


@pytest.mark.slow
def test_health_answers_ok_once_the_workers_are_ready(server):
    answer = httpx.get(f"{server.url}/health", timeout=10)
    assert (answer.status_code, answer.text) == (200, "ok")


@pytest.mark.slow
def test_recommend_over_http_equals_the_recommender_in_process(server, recommender):
    for user in recommender.users[:3]:
        answer = post(server, "recommend", {"user": user, "k": 5})
        expected = recommender.recommend(user=user, k=5)
        assert items(answer) == [item for item, _ in expected]
        assert [e["score"] for e in answer.json()["items"]] == pytest.approx([s for _, s in expected], abs=1e-4)
    history = recommender.items[:3]
    expected = recommender.recommend(history=history, k=4, exclude_seen=False)
    assert items(post(server, "recommend", {"history": history, "k": 4, "exclude_seen": False})) == \
        [item for item, _ in expected]


@pytest.mark.slow
def test_concurrent_requests_each_get_their_own_answer(server, recommender):
    users = recommender.users[:16]
    ks = [3 + i % 3 for i in range(len(users))]  # several k: the server decodes each k's requests together
    with ThreadPoolExecutor(len(users)) as pool:
        answers = list(pool.map(lambda uk: post(server, "recommend", {"user": uk[0], "k": uk[1]}), zip(users, ks)))
    for user, k, answer in zip(users, ks, answers):
        assert items(answer) == [item for item, _ in recommender.recommend(user=user, k=k)]


def test_a_refused_request_in_a_batch_leaves_the_others_their_answers(exported, recommender):
    api = RecommendAPI(exported, max_batch_size=8)
    api.setup("cpu")
    users = recommender.users[:2]
    # the unknown user shares its group (k=3) with two good requests: the group's batch call fails, each answers alone
    batch = [RecommendBody(user=users[0], k=3), RecommendBody(user="no-such-user", k=3), RecommendBody(user=users[1], k=3),
             RecommendBody(user=users[0], k=0), RecommendBody(history=recommender.items[:2], k=2)]
    answers = [api.encode_response(out) for out in api.predict([api.decode_request(b) for b in batch])]
    assert [a.status_code for a in answers] == [200, 404, 200, 400, 200]
    for answer, body in zip(answers, batch):
        if answer.status_code == 200:
            expected = recommender.recommend(user=body.user, history=body.history, k=body.k)
            assert [e["item"] for e in json.loads(answer.body)["items"]] == [item for item, _ in expected]
    assert "unknown user 'no-such-user'" in json.loads(answers[1].body)["detail"]


@pytest.mark.slow
def test_score_and_rate_equal_the_recommender_in_process(server, recommender):
    user, candidates = recommender.users[0], recommender.items[:4]
    answer = post(server, "score", {"user": user, "items": candidates})
    assert answer.status_code == 200, answer.text
    assert answer.json()["scores"] == pytest.approx(recommender.score(user, candidates), abs=1e-4)
    answer = post(server, "rate", {"user": user, "item": candidates[0]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["rating"] == pytest.approx(recommender.rate(user, candidates[0]), abs=1e-4)


BAD_REQUESTS = {  # endpoint, body, status, a phrase of the reason
    "unknown user": ("recommend", {"user": "no-such-user"}, 404, "unknown user 'no-such-user'"),
    "unknown item in a history": ("recommend", {"history": ["no-such-item"]}, 404, "unknown item 'no-such-item'"),
    "unknown item to score": ("score", {"user": None, "items": ["no-such-item"]}, 404, "unknown item"),
    "k below 1": ("recommend", {"user": None, "k": 0}, 400, "k must be an integer from 1"),
    "k above the catalog": ("recommend", {"user": None, "k": 10 ** 6}, 400, "k must be an integer from 1"),
    "user and history": ("recommend", {"user": None, "history": []}, 400, "not both"),
    "neither user nor history": ("recommend", {"k": 3}, 422, "give `user`"),
    "malformed JSON": ("recommend", '{"user": ', 422, "JSON decode error"),
    "missing field": ("score", {"user": None}, 422, "Field required"),
    "wrong type": ("rate", {"user": None, "item": ["a", "list"]}, 422, "valid string"),
    "unknown field": ("recommend", {"usr": "x"}, 422, "Extra inputs are not permitted"),
    "family not trained": ("explain", {"user": None, "item": None}, 400, "'explanation' task family"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_a_4xx_with_its_reason_and_the_server_answers_on(server, recommender, case):
    endpoint, body, status, reason = BAD_REQUESTS[case]
    if isinstance(body, dict):  # None stands for a known user / item
        known = {"user": recommender.users[0], "item": recommender.items[0]}
        body = {key: known[key] if value is None else value for key, value in body.items()}
    answer = post(server, endpoint, body)
    assert answer.status_code == status, answer.text
    assert reason in json.dumps(answer.json()["detail"])
    assert len(items(post(server, "recommend", {"user": recommender.users[0], "k": 2}))) == 2


def test_serve_refuses_a_missing_model_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        serve_main(["--model", str(tmp_path / "nowhere")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == \
        f"recsys-lightning: error: --model {tmp_path / 'nowhere'}: no such export folder or checkpoint file"


# Last on purpose: it stops the module's server.
@pytest.mark.slow
def test_sigterm_stops_the_server_and_every_process_it_started(server):
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the group (start_new_session) holds the workers and HTTP servers
        try:
            os.killpg(server.process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("processes of the server's group outlived it")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=5)
