"""Models on every document store: a state dict of any size stores in chunk documents
and comes back equal; per-store save_models; nothing stored is ever unpickled."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections import OrderedDict
from typing import Any

import anyio
import pytest
import torch

from asyncstore import CodecError, DataFetcher, DataStorer, NotFoundError, load_config
from asyncstore._documents import MODEL_REGISTRY, MODELS, Write
from asyncstore._models import chunk_id, model_writes
from asyncstore.stores import open_store
from asyncstore.stores.local import LocalStore

from ._data import assert_same


def _config(kind: str, request: pytest.FixtureRequest, tmp_path: Any,
            save_models: bool = True) -> dict[str, Any]:
    if kind == "local":
        db: dict[str, Any] = {"name": "local", "path": str(tmp_path / "store.db")}
    else:
        emulator = request.getfixturevalue("firestore_emulator")
        project = request.getfixturevalue("firestore_project")
        db = {"name": "firestore", "project": project, "emulator_host": emulator.host}
    db["save_models"] = save_models
    return {
        "wandb": {"mode": "disabled"},
        "database": {"read_database": db["name"], "write_databases": [db]},
        "writer": {"flush_interval": 0.05},
    }


@pytest.fixture(params=["local", "firestore"])
def store_config(request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    return _config(request.param, request, tmp_path)


def big_state_dict() -> OrderedDict[str, torch.Tensor]:
    """About 50 MB in several dtypes, with the awkward cases a state dict can hold."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(2048, 4096, generator=g)  # 32 MiB
    weight[0, :3] = torch.tensor([float("nan"), float("inf"), -0.0])
    return OrderedDict([
        ("encoder.weight", weight),
        ("encoder.half", torch.randn(2048, 2048, generator=g).half()),  # 8 MiB
        ("encoder.bf16", torch.randn(1024, 2048, generator=g).bfloat16()),  # 4 MiB
        ("codes", torch.randint(-(2**62), 2**62, (512, 1024), generator=g)),  # 4 MiB
        ("mask", torch.rand(1000, 1000, generator=g) > 0.5),  # 1 MB
        ("pixels", torch.randint(0, 256, (1024, 1024), generator=g, dtype=torch.uint8)),
        ("double", torch.randn(64, 64, generator=g, dtype=torch.float64)),
        ("fp8", torch.randn(16, generator=g).to(torch.float8_e4m3fn)),
        ("bn.num_batches_tracked", torch.tensor(17)),
        ("empty", torch.zeros(0, 3)),
        ("transposed", torch.randn(30, 20, generator=g).t()),
    ])


def test_a_50_mb_state_dict_saves_and_comes_back_equal(store_config):
    state = big_state_dict()
    total = sum(t.numel() * t.element_size() for t in state.values())
    assert total > 50_000_000
    with DataStorer([], store_config) as ds:
        ds.save_model("big-exp", state, {"model_name": "sparsey-big", "layers": [16, 11, 7]})
        assert ds.stats().failed == 0
    fetcher = DataFetcher(store_config)
    got = fetcher.get_model_weights("big-exp-model")
    assert type(got) is OrderedDict and list(got) == list(state)
    for name, tensor in state.items():
        assert_same(got[name], tensor.contiguous(), name)
    assert fetcher.get_model_config("big-exp-model") == {
        "model_name": "sparsey-big", "layers": [16, 11, 7]}
    doc = fetcher._store.get(MODELS, "big-exp-model")
    assert doc is not None and doc["weights"]["chunks"] >= 56
    registry = fetcher._store.get(MODEL_REGISTRY, "sparsey-big")
    assert registry is not None
    assert [v["id"] for v in registry["versions"].values()] == ["big-exp-model"]


def test_a_module_saves_and_loads_into_a_fresh_module(store_config):
    def make() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5),
                                   torch.nn.ReLU(), torch.nn.Linear(5, 2))

    torch.manual_seed(0)
    model = make()
    model(torch.randn(8, 6))  # moves the BatchNorm running statistics
    with DataStorer([], store_config) as ds:
        ds.save_model("mod", model)
    fetcher = DataFetcher(store_config)
    fresh = make()
    fresh.load_state_dict(fetcher.get_model_weights("mod-model"))
    model.eval()
    fresh.eval()
    x = torch.randn(4, 6)
    assert torch.equal(model(x), fresh(x))
    assert fetcher.get_model_config("mod-model") == {}
    assert fetcher._store.get(MODEL_REGISTRY, "mod-model") is not None  # no model_name
    with pytest.raises(NotFoundError):
        fetcher.get_model_weights("no-such-model")


def test_weights_are_a_snapshot_taken_at_the_call(store_config):
    model = torch.nn.Linear(3, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with DataStorer([], store_config) as ds:
        ds.save_model("snap", model)
        with torch.no_grad():
            model.weight.add_(1.0)  # training goes on
    got = DataFetcher(store_config).get_model_weights("snap-model")
    assert_same(dict(got), before)


def test_saving_a_model_again_replaces_its_weights(store_config):
    with DataStorer([], store_config) as ds:
        ds.save_model("twice", {"w": torch.zeros(300_000)}, {"model_name": "reg"})
        ds.flush()
        ds.save_model("twice", {"w": torch.ones(500_000), "b": torch.ones(2)},
                      {"model_name": "reg"})
    fetcher = DataFetcher(store_config)
    got = fetcher.get_model_weights("twice-model")
    assert_same(dict(got), {"w": torch.ones(500_000), "b": torch.ones(2)})
    registry = fetcher._store.get(MODEL_REGISTRY, "reg")
    assert registry is not None and len(registry["versions"]) == 1


@pytest.mark.parametrize("kind", ["local", "firestore"])
def test_a_store_with_save_models_off_keeps_the_documents_not_the_weights(
    kind, request, tmp_path
):
    cfg = _config(kind, request, tmp_path, save_models=False)
    with DataStorer([], cfg) as ds:
        ds.save_model("off", {"w": torch.ones(400_000)}, {"model_name": "kept"})
    fetcher = DataFetcher(cfg)
    assert fetcher.get_model_config("off-model") == {"model_name": "kept"}
    assert fetcher._store.get(MODEL_REGISTRY, "kept") is not None
    with pytest.raises(NotFoundError, match="save_models"):
        fetcher.get_model_weights("off-model")
    assert fetcher._store.query(MODELS, {"kind": "weights"}) == []


def test_bad_model_arguments_raise_at_the_call_and_queue_nothing(tmp_path):
    cfg = _config("local", None, tmp_path)
    with DataStorer([], cfg) as ds:
        with pytest.raises(TypeError):
            ds.save_model("e", None)
        with pytest.raises(TypeError):
            ds.save_model("e", {1: torch.ones(1)})
        with pytest.raises(TypeError):
            ds.save_model("e", {"w": torch.ones(2).to_sparse()})
        with pytest.raises(TypeError):
            ds.save_model("e", {"w": object()})
        with pytest.raises(TypeError):
            ds.save_model("e", {"w": torch.ones(1)}, "config")
        with pytest.raises(ValueError):
            ds.save_model("a/b", {"w": torch.ones(1)})
        with pytest.raises(ValueError):
            ds.save_model("e", {"w": torch.ones(1)}, {"model_name": "x/y"})
        ds.flush()
        assert ds.stats().accepted == 0


# --------------------------------------------------------------------------- no pickle


class _CreatesFile:
    """Unpickling this object opens (so creates) a file: what a hostile document holds."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def _commit(cfg: dict[str, Any], writes: list[Write]) -> None:
    from asyncstore import load_config

    store = open_store(load_config(cfg).read_db)
    if isinstance(store, LocalStore):
        store.commit_sync(writes)
    else:
        async def go() -> None:
            await store.commit(writes)
            await store.aclose()

        anyio.run(go)
    store.close()


def test_a_pickle_payload_in_place_of_weights_is_never_unpickled(store_config, tmp_path):
    live = tmp_path / "proof.txt"
    pickle.loads(pickle.dumps(_CreatesFile(str(live))))  # the payload is live...
    assert live.exists()
    marker = tmp_path / "pwned.txt"
    payload = pickle.dumps(_CreatesFile(str(marker)))
    # 1. A seed-style document: the state dict pickled into the model document.
    seed_doc = Write(MODELS, "seed-model",
                     {"registry_name": "seed-model", "config": {"layers": 2},
                      "trained_weights": payload})
    # 2. asyncstore's layout with its one chunk replaced by the pickle.
    swapped = model_writes("swapped", {"w": torch.ones(4)}, None)
    for w in swapped:
        if w.model_weights and "data" in w.fields:
            w.fields["data"] = payload  # type: ignore[index]
    # 3. The same with the manifest rewritten to match, so only the decoder stands guard.
    forged = model_writes("forged", {"w": torch.ones(4)}, None)
    digest = hashlib.blake2b(payload, digest_size=32).hexdigest()
    cid = chunk_id("forged-model", digest, 0)
    forged = [w for w in forged if not w.model_weights] + [
        Write(MODELS, cid, {"v": 1, "kind": "weights", "model": "forged-model",
                            "digest": digest, "chunk": 0, "chunks": 1, "data": payload}),
        Write(MODELS, "forged-model",
              {"weights": {"format": "asyncstore-codec-1", "bytes": len(payload),
                           "digest": digest, "chunks": 1, "ids": [cid]}}, merge=True),
    ]
    _commit(store_config, [seed_doc, *swapped, *forged])

    fetcher = DataFetcher(store_config)
    for model_id in ("seed-model", "swapped-model", "forged-model"):
        with pytest.raises(CodecError):
            fetcher.get_model_weights(model_id)
        assert not marker.exists(), model_id
    assert not os.path.exists(marker)


def test_model_operations_survive_the_spool_unchanged():
    from asyncstore._front import Front
    from asyncstore._spool import op_from_bytes, op_to_bytes

    front = Front(load_config({"wandb": {"mode": "disabled"}}), frozenset())
    op = front.model("e", {"w": torch.ones(300_000)}, {"a": 1})
    back = op_from_bytes(op_to_bytes(op))
    assert back.writes == op.writes
    assert [w.model_weights for w in back.writes] == [False, False, True, True, True]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_on_the_gpu_stores_and_comes_back_on_the_cpu(tmp_path):
    cfg = _config("local", None, tmp_path)
    model = torch.nn.Linear(4, 4).cuda()
    want = {k: v.cpu() for k, v in model.state_dict().items()}
    with DataStorer([], cfg) as ds:
        ds.save_model("gpu", model)
    assert_same(dict(DataFetcher(cfg).get_model_weights("gpu-model")), want)
