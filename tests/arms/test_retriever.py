"""The retriever arm: chunking, BM25, the local embedder, RRF, ingest, and search over real gRPC."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from jsonschema import Draft202012Validator
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk import Arm, ArmServer, grpc_options
from orchestrator_svc.arms import retriever
from orchestrator_svc.arms.retriever.bm25 import BM25Index
from orchestrator_svc.arms.retriever.chunking import chunk_document
from orchestrator_svc.arms.retriever.fusion import reciprocal_rank_fusion
from orchestrator_svc.arms.retriever.search import MAX_QUERY_CHARS, NOTHING_INDEXED
from orchestrator_svc.arms.retriever.store import (
    CORPUS_FILE,
    DocumentStore,
    StoreBusy,
    StoreConfig,
    scroll_records,
)
from orchestrator_svc.llm.embed import (
    DimensionMismatch,
    HashEmbedder,
    OpenAIEmbedder,
    embedder_from_env,
)
from orchestrator_svc.llm.terms import terms
from tests.arm_sdk.arm_stream import HANG_GUARD_S, ArmStream, output_of
from tests.llm.fake_openai import FakeOpenAI, Reply

ROOT = Path(__file__).resolve().parents[2]

DOCS: dict[str, str] = {
    "README.md": (
        "# OctoLLM\n\nThe orchestrator plans each task as a DAG and streams subtasks to arms "
        "over gRPC.\n"
    ),
    "guide/install.md": (
        "# Installing OctoLLM\n\n"
        "## Requirements\n\n"
        "OctoLLM needs Python 3.11 and a C compiler for grpcio on unusual platforms.\n\n"
        "## Virtual environment\n\n"
        "Create a virtual environment with `python -m venv .venv`, activate it, then install "
        "the package with pip in editable mode.\n"
    ),
    "guide/deploy.markdown": (
        "# Deploying\n\n"
        "## Kubernetes\n\n"
        "The manifests use kustomize overlays; readiness probes use the native gRPC health "
        "check.\n\n"
        "## Docker\n\n"
        "The image runs as an unprivileged user and exposes port 50051 for gRPC and port 9464 "
        "for Prometheus metrics.\n"
    ),
    "notes/bread.txt": (
        "Sourdough bread needs a lively starter. Feed the starter twice a day with flour and "
        "water.\n\nBake the loaf at 250 degrees with steam for the first twenty minutes.\n"
    ),
    # Left out by ingest: hidden folders and other file types.
    ".git/HEAD.md": "# hidden\n\nNever indexed.\n",
    "notes/photo.png": "not text",
}


def write_docs(root: Path, docs: dict[str, str] = DOCS) -> Path:
    for name, text in docs.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def corpus_lines(store: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (store / CORPUS_FILE).read_text().splitlines()]


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """A small document folder."""
    return write_docs(tmp_path / "docs")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A local store folder (not created until something is ingested)."""
    return tmp_path / "store"


Serve = Callable[[Arm], Awaitable[ArmStream]]


@pytest.fixture
async def serve(start_arm: Callable[[Arm], Awaitable[ArmServer]]) -> AsyncIterator[Serve]:
    """Serve an arm on port 0 and open an Execute stream to it (Hello and Credit read)."""
    channels: list[grpc.aio.Channel] = []

    async def open_(arm: Arm) -> ArmStream:
        server = await start_arm(arm)
        channel = grpc.aio.insecure_channel(server.address, options=grpc_options.CHANNEL_OPTIONS)
        channels.append(channel)
        stream = ArmStream(channel)
        await stream.handshake()
        return stream

    yield open_
    for channel in channels:
        await channel.close()


async def run(
    stream: ArmStream, payload: dict[str, Any], subtask_id: str = "s1", **fields: Any
) -> arm_pb.ExecuteResponse:
    """Dispatch one subtask; return its Result or SubtaskFailure."""
    await stream.dispatch(subtask_id, payload, **fields)
    while True:
        message = await stream.recv()
        kind = message.WhichOneof("kind")
        if kind in ("result", "failure") and getattr(message, kind).subtask_id == subtask_id:
            return message


async def search(stream: ArmStream, payload: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The output of a subtask that must succeed; also checked against the output schema."""
    message = await run(stream, payload, **fields)
    assert message.WhichOneof("kind") == "result", message
    output = output_of(message)
    Draft202012Validator(retriever.OUTPUT_SCHEMA).validate(output)
    return output


# --- chunking ---------------------------------------------------------------------------------


def test_chunks_follow_headings_and_carry_the_heading_trail() -> None:
    """A chunk never crosses a heading and names the headings above it."""
    text = (
        "Title\n=====\n\nIntro line.\n\n## Install\n\nRun pip.\n\n### Linux\n\nUse apt.\n\n"
        "# Other\nLast words."
    )
    chunks = chunk_document(text)
    assert [(c.heading, c.text) for c in chunks] == [
        ("Title", "Intro line."),
        ("Title > Install", "Run pip."),
        ("Title > Install > Linux", "Use apt."),
        ("Other", "Last words."),
    ]


def test_chunks_stay_within_size_and_overlap_at_sentence_starts() -> None:
    """Long sections pack paragraphs up to chunk_chars; neighbours share a whole sentence."""
    body = " ".join(f"Fact number {i} is about topic {i}." for i in range(60))
    chunks = chunk_document(f"# Facts\n\n{body}", chunk_chars=300, overlap=80)
    assert len(chunks) > 3
    assert all(len(c.text) <= 300 for c in chunks)
    assert all(c.heading == "Facts" for c in chunks)
    for before, after in itertools.pairwise(chunks):
        first = after.text.split(". ")[0] + "."
        assert first.startswith("Fact number ")
        assert first in before.text[-80:]
    joined = " ".join(c.text for c in chunks)
    assert all(f"Fact number {i} is" in joined for i in range(60))


def test_code_fences_stay_whole_and_plain_text_has_no_headings() -> None:
    """Blank lines inside a fence do not split it; '#' lines in .txt files are text."""
    fenced = chunk_document("# Code\n\n```python\ndef f():\n\n    return 1\n```\n", overlap=0)
    assert [c.text for c in fenced] == ["```python\ndef f():\n\n    return 1\n```"]
    plain = chunk_document("# not a heading\n\nbody", markdown=False)
    assert [(c.heading, c.text) for c in plain] == [("", "# not a heading\n\nbody")]


def test_chunk_sizes_are_validated() -> None:
    """A tiny chunk_chars or an overlap over half a chunk is refused."""
    with pytest.raises(ValueError, match="chunk_chars"):
        chunk_document("x", chunk_chars=5)
    with pytest.raises(ValueError, match="overlap"):
        chunk_document("x", chunk_chars=100, overlap=60)


# --- BM25, embedder, fusion -------------------------------------------------------------------


def test_bm25_ranks_matching_rare_and_short_documents_first() -> None:
    """Documents with the query terms rank first; rare terms weigh more; shorter docs win ties."""
    documents = [
        terms("the cat sat on the mat"),
        terms("the dog chased the cat around the garden and the house"),
        terms("a quantum cat"),
        terms("bread and butter"),
    ]
    index = BM25Index(documents)
    assert index.idf("quantum") > index.idf("cat") > 0
    ranked = [doc for doc, _ in index.top(terms("quantum cat"), 10)]
    assert ranked[0] == 2
    assert 3 not in ranked
    cat_only = index.scores(terms("cat"))
    assert cat_only[0] > cat_only[1]
    assert index.top(terms("zebra"), 5) == []


def test_hash_embedder_is_deterministic_normalised_and_morphology_aware() -> None:
    """Same text, same unit vector (any instance); shared word pieces make texts closer."""
    a, b = HashEmbedder(), HashEmbedder()
    text = "Installing the package into a virtual environment"
    vector = a.vector(text)
    assert vector == b.vector(text)
    assert len(vector) == 384
    assert math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-9)
    query = a.vector("installation of packages in virtualenvs")

    def cosine(other: list[float]) -> float:
        return sum(x * y for x, y in zip(query, other, strict=True))

    assert cosine(vector) > cosine(a.vector("Bake the loaf with steam")) + 0.2
    assert a.vector("!!! ???") == [0.0] * 384


async def test_hash_embedder_is_stable_across_processes() -> None:
    """Another interpreter (another hash seed) makes the same vector: ingest and arm agree."""
    code = (
        "import json,sys;from orchestrator_svc.llm.embed import HashEmbedder;"
        "print(json.dumps(HashEmbedder().vector(sys.argv[1])))"
    )
    text = "Kustomize overlays and gRPC health probes"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        text,
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    assert json.loads(out) == HashEmbedder().vector(text)


def test_rrf_prefers_agreement_and_is_deterministic() -> None:
    """A key both rankings hold beats keys that top only one; scores are sum(1/(60+rank))."""
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d", "c"]])
    assert [key for key, _ in fused] == ["b", "c", "a", "d"]
    scores = dict(fused)
    assert math.isclose(scores["b"], 1 / 62 + 1 / 61)
    assert math.isclose(scores["c"], 2 / 63)
    assert math.isclose(scores["a"], 1 / 61)
    assert reciprocal_rank_fusion([["x", "y"], ["y", "x"]]) == reciprocal_rank_fusion(
        [["x", "y"], ["y", "x"]]
    )
    assert [k for k, _ in reciprocal_rank_fusion([["x", "y"], ["y", "x"]])] == ["x", "y"]


# --- ingest -----------------------------------------------------------------------------------


async def test_ingest_indexes_documents_and_is_idempotent(docs: Path, store: Path) -> None:
    """Re-ingesting the same folder keeps the same points and corpus (ids are deterministic)."""
    first = await retriever.ingest(docs, store_path=store)
    assert first.files == 4
    assert first.chunks == first.points == 6
    assert first.embedder == "hash-ngram-v1-384"
    lines = corpus_lines(store)
    assert sorted({line["source"] for line in lines}) == [
        "README.md",
        "guide/deploy.markdown",
        "guide/install.md",
        "notes/bread.txt",
    ]
    assert {"source", "chunk", "text", "heading"} == set(lines[0])

    second = await retriever.ingest(docs, store_path=store)
    assert second.points == first.points
    assert corpus_lines(store) == lines
    assert await DocumentStore(StoreConfig(path=store)).count() == first.points


async def test_reingest_drops_chunks_a_file_no_longer_has(docs: Path, store: Path) -> None:
    """A shrunk file's old chunks leave both Qdrant and the BM25 corpus."""
    await retriever.ingest(docs, store_path=store)
    (docs / "guide/deploy.markdown").write_text("# Deploying\n\nOnly compose now.\n")
    report = await retriever.ingest(docs, store_path=store)
    assert report.points == 5
    deploy = [line for line in corpus_lines(store) if line["source"] == "guide/deploy.markdown"]
    assert [line["text"] for line in deploy] == ["Only compose now."]


async def test_ingest_one_file_and_refuse_other_types(docs: Path, store: Path) -> None:
    """A lone file is ingested under its name; a non-document file or missing path is refused."""
    report = await retriever.ingest(docs / "notes/bread.txt", store_path=store)
    assert (report.files, report.chunks) == (1, 1)
    assert corpus_lines(store)[0]["source"] == "bread.txt"
    with pytest.raises(ValueError, match="not a text or Markdown file"):
        await retriever.ingest(docs / "notes/photo.png", store_path=store)
    with pytest.raises(FileNotFoundError):
        await retriever.ingest(docs / "missing", store_path=store)


async def test_ingest_of_a_folder_without_documents_writes_nothing(
    tmp_path: Path, store: Path
) -> None:
    """A folder with no .md/.markdown/.txt files reports zero and leaves no store behind."""
    empty = write_docs(tmp_path / "empty", {"image.png": "x", ".hidden/a.md": "# no"})
    report = await retriever.ingest(empty, store_path=store)
    assert (report.files, report.chunks, report.points) == (0, 0, 0)
    assert not await asyncio.to_thread(store.exists)


async def test_ingest_refuses_an_embedder_of_another_size(docs: Path, store: Path) -> None:
    """A store filled with 384-d vectors does not silently take 64-d ones."""
    await retriever.ingest(docs, store_path=store)
    with pytest.raises(DimensionMismatch, match="384"):
        await retriever.ingest(docs, store_path=store, embedder=HashEmbedder(64))


async def test_local_store_is_used_by_one_client_at_a_time(docs: Path, store: Path) -> None:
    """A second user of a local store waits for the first (or gives up with StoreBusy)."""
    await retriever.ingest(docs, store_path=store)
    holder = DocumentStore(StoreConfig(path=store))
    waiter = DocumentStore(StoreConfig(path=store))
    impatient = DocumentStore(StoreConfig(path=store, lock_wait_s=0.1))
    async with holder.session():
        counting = asyncio.create_task(waiter.count())
        await asyncio.sleep(0.2)
        assert not counting.done()
        with pytest.raises(StoreBusy):
            await impatient.count()
    assert await asyncio.wait_for(counting, HANG_GUARD_S) == 6


async def test_scroll_rebuilds_the_corpus_from_payloads(docs: Path, store: Path) -> None:
    """Server mode's BM25 source: every chunk comes back from the collection's payloads."""
    await retriever.ingest(docs, store_path=store)
    local = DocumentStore(StoreConfig(path=store))
    async with local.session() as client:
        records = await scroll_records(client, local.config.collection)
        assert await scroll_records(client, "no_such_collection") == []
    assert sorted((r.source, r.chunk, r.heading, r.text) for r in records) == sorted(
        (line["source"], line["chunk"], line["heading"], line["text"])
        for line in corpus_lines(store)
    )


# --- the arm over gRPC ------------------------------------------------------------------------


async def test_descriptor_declares_retrieval_and_valid_schemas(serve: Serve, store: Path) -> None:
    """Hello carries arm type, capabilities and JSON Schemas that are themselves valid."""
    arm = retriever.build(store_path=store)
    descriptor = arm.descriptor()
    assert descriptor.arm_type == "retriever"
    assert list(descriptor.capabilities) == ["retrieval", "search", "context"]
    for schema in (descriptor.input_schema, descriptor.output_schema):
        Draft202012Validator.check_schema(json_format.MessageToDict(schema))
    await serve(arm)


async def test_search_finds_the_chunk_for_a_paraphrased_query(
    serve: Serve, docs: Path, store: Path
) -> None:
    """A query in other words finds the right chunk, with source, chunk, heading and score."""
    await retriever.ingest(docs, store_path=store)
    stream = await serve(retriever.build(store_path=store))
    output = await search(
        stream, {"query": "how do I set up an isolated python environment for the installation"}
    )
    best = output["results"][0]
    assert (best["source"], best["heading"]) == (
        "guide/install.md",
        "Installing OctoLLM > Virtual environment",
    )
    assert best["chunk"] == 1
    assert best["text"].startswith("Create a virtual environment")
    assert best["score"] > 0
    assert "Create a virtual environment" in output["answer"]
    assert "guide/install.md #1" in output["answer"]

    output = await search(stream, {"query": "what port are metrics exposed on", "top_k": 2})
    assert len(output["results"]) == 2
    assert output["results"][0]["heading"] == "Deploying > Docker"


async def test_answer_quotes_the_paragraph_that_covers_the_query(
    serve: Serve, docs: Path, store: Path
) -> None:
    """The answer says no model wrote it and quotes the whole paragraph that matches, with
    its source; a query no document covers is answered "not found", naming what is missing."""
    await retriever.ingest(docs, store_path=store)
    stream = await serve(retriever.build(store_path=store))
    output = await search(stream, {"query": "what port does the docker image expose for metrics"})
    lines = output["answer"].splitlines()
    assert lines[0] == "From the indexed documents (no model wrote this answer):"
    paragraph = (
        "The image runs as an unprivileged user and exposes port 50051 for gRPC and port 9464 "
        "for Prometheus metrics."
    )
    assert paragraph in output["answer"]
    assert "guide/deploy.markdown #" in output["answer"]
    assert "Sourdough" not in output["answer"]

    output = await search(stream, {"query": "difference between TCP and UDP"}, subtask_id="s2")
    assert output["results"], "the closest chunks are still returned"
    answer = output["answer"].lower()
    assert "not found in the indexed documents" in answer
    assert "tcp" in answer
    assert "udp" in answer


async def test_planner_shaped_input_searches_the_goal(
    serve: Serve, docs: Path, store: Path
) -> None:
    """Without input.query the goal is searched; without a goal, the dispatch description."""
    await retriever.ingest(docs, store_path=store)
    stream = await serve(retriever.build(store_path=store))
    output = await search(
        stream, {"goal": "How long should sourdough bake with steam?", "constraints": []}
    )
    assert output["results"][0]["source"] == "notes/bread.txt"
    output = await search(stream, {}, description="Find the kustomize readiness probes")
    assert output["results"][0]["heading"] == "Deploying > Kubernetes"


async def test_empty_collection_answers_that_nothing_is_indexed(serve: Serve, store: Path) -> None:
    """With nothing ingested the arm succeeds with no results, says so, and creates nothing."""
    stream = await serve(retriever.build(store_path=store))
    output = await search(stream, {"query": "anything at all"})
    assert output == {"results": [], "answer": NOTHING_INDEXED}
    assert not await asyncio.to_thread(store.exists)


async def test_huge_query_is_truncated_and_still_answered(
    serve: Serve, docs: Path, store: Path
) -> None:
    """A 1 MB query is cut to its first MAX_QUERY_CHARS characters and answered."""
    await retriever.ingest(docs, store_path=store)
    stream = await serve(retriever.build(store_path=store))
    query = "sourdough starter flour water " + "lorem ipsum " * 90_000
    assert len(query) > 1_000_000 > MAX_QUERY_CHARS
    output = await search(stream, {"query": query, "top_k": 3})
    assert output["results"][0]["source"] == "notes/bread.txt"
    assert len(output["results"]) <= 3
    assert f"cut to its first {MAX_QUERY_CHARS} characters" in output["answer"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"query": 42}, "query"),
        ({"query": ["a", "list"]}, "query"),
        ({"query": {"nested": "object"}}, "query"),
        ({"query": "ok", "top_k": 0}, "top_k"),
        ({"query": "ok", "top_k": 2.5}, "top_k"),
        ({"query": "ok", "top_k": "five"}, "top_k"),
        ({"query": "   "}, "query"),
    ],
)
async def test_bad_input_fails_invalid_argument(
    serve: Serve, store: Path, payload: dict[str, Any], field: str
) -> None:
    """A non-string query, a bad top_k or no query at all fail INVALID_ARGUMENT, not retryable."""
    stream = await serve(retriever.build(store_path=store))
    message = await run(stream, payload)
    assert message.WhichOneof("kind") == "failure", message
    failure = message.failure.failure
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert failure.reason == "BAD_INPUT"
    assert not failure.retryable
    assert failure.metadata["field"] == field
    await stream.ping(7)


async def test_cancelled_search_leaves_the_store_usable(
    serve: Serve, docs: Path, store: Path
) -> None:
    """Cancelling a search mid-flight releases the local store: the next search works."""
    await retriever.ingest(docs, store_path=store)
    stream = await serve(retriever.build(store_path=store))
    for round_ in range(5):
        await stream.dispatch(f"c{round_}", {"query": "kustomize overlays"})
        await stream.cancel(f"c{round_}")
    output = await search(stream, {"query": "kustomize overlays"}, subtask_id="after")
    assert output["results"][0]["heading"] == "Deploying > Kubernetes"
    assert await DocumentStore(StoreConfig(path=store, lock_wait_s=HANG_GUARD_S)).count() == 6


async def test_arm_sees_documents_ingested_by_another_process(
    serve: Serve, docs: Path, store: Path
) -> None:
    """`ingest` in another process (as `octollm ingest` runs) and the serving arm share a store."""
    stream = await serve(retriever.build(store_path=store))
    assert (await search(stream, {"query": "sourdough"}))["results"] == []
    code = (
        "import asyncio,sys;from orchestrator_svc.arms.retriever import ingest;"
        "print(asyncio.run(ingest(sys.argv[1], store_path=sys.argv[2])).points)"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, str(docs), str(store), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0
    assert out.decode().strip().splitlines()[-1] == "6"
    results = (await search(stream, {"query": "sourdough", "top_k": 1}, subtask_id="s2"))["results"]
    assert [r["source"] for r in results] == ["notes/bread.txt"]


async def test_search_with_an_embeddings_endpoint(
    serve: Serve, docs: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an OpenAI-compatible embeddings endpoint, ingest and search embed through it."""
    local = HashEmbedder(32)

    def embeddings(body: dict[str, Any], index: int) -> Reply:
        data = [
            {"object": "embedding", "index": i, "embedding": local.vector(text)}
            for i, text in enumerate(body["input"])
        ]
        return Reply(body={"object": "list", "data": data, "model": body["model"], "usage": {}})

    fake = await FakeOpenAI(embeddings).start()
    monkeypatch.setenv("OCTOLLM_EMBEDDINGS_BASE_URL", fake.base_url)
    monkeypatch.setenv("OCTOLLM_EMBEDDINGS_MODEL", "fake-embed")
    monkeypatch.setenv("OCTOLLM_LLM_API_KEY", "sk-test")
    embedder = embedder_from_env()
    try:
        assert isinstance(embedder, OpenAIEmbedder)
        report = await retriever.ingest(docs, store_path=store)
        assert report.embedder == "openai:fake-embed"
        assert report.points == 6
        stream = await serve(retriever.build(store_path=store, embedder=embedder))
        output = await search(stream, {"query": "unprivileged docker image"})
        assert output["results"][0]["heading"] == "Deploying > Docker"
        assert output["results"][0]["score"] > 1 / 61
        assert {r["model"] for r in fake.requests} == {"fake-embed"}
        assert all(r["encoding_format"] == "float" for r in fake.requests)
        assert fake.requests[-1]["input"] == ["unprivileged docker image"]
    finally:
        await embedder.aclose()
        await fake.close()


async def test_failing_embeddings_fall_back_to_bm25(serve: Serve, docs: Path, store: Path) -> None:
    """When the query cannot be embedded, BM25 alone still answers."""
    await retriever.ingest(docs, store_path=store)
    broken = OpenAIEmbedder("http://127.0.0.1:9/v1", "none", timeout_s=2, max_retries=0)
    try:
        stream = await serve(retriever.build(store_path=store, embedder=broken))
        output = await search(stream, {"query": "kustomize overlays"})
        assert output["results"][0]["heading"] == "Deploying > Kubernetes"
    finally:
        await broken.aclose()


async def test_retriever_step_through_the_orchestrator(
    start_arm: Callable[[Arm], Awaitable[ArmServer]],
    start_orchestrator: Any,
    connect: Any,
    docs: Path,
    store: Path,
) -> None:
    """A planned retriever step succeeds (its output passes the declared schema) and the task's
    answer carries the extract."""
    await retriever.ingest(docs, store_path=store)
    server = await start_arm(retriever.build(store_path=store))
    orchestrator = await start_orchestrator([server.address], wait_for=("retriever",))
    stub = connect(orchestrator.address)
    plan = pb.Plan()
    plan.steps.add(step_id="find", arm_type="retriever").input.update(
        {"query": "readiness probes in kubernetes", "top_k": 2}
    )
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal="Find the probes", plan=plan))).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        pass
    task = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
    (sub,) = task.subtasks
    output = json_format.MessageToDict(sub.output)
    assert output["results"][0]["heading"] == "Deploying > Kubernetes"
    assert "native gRPC health" in task.result.answer
