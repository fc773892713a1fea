"""``--shard i/n`` parsing and the merge back into unsharded order (orders computed by hand)."""
import json

import pytest

from preprocessing.sharding import Shard, ShardError, merge_counts, merge_jsonl, shard_path


def test_parse_and_ownership():
    assert Shard.parse("1/3") == Shard(1, 3)
    assert Shard.parse(None).whole
    assert [i for i in range(7) if Shard(1, 3).owns(i)] == [1, 4]
    for bad in ("3/3", "a/b", "1", "-1/2", "0/0"):
        with pytest.raises(ShardError):
            Shard.parse(bad)


def test_merge_restores_global_order(tmp_path):
    base = tmp_path / "pairs.jsonl"
    rows = [{"doc": d, "chunk": c} for d in range(5) for c in range(2)]
    for s in Shard(0, 3).all():
        p = shard_path(base, s)
        p.parent.mkdir(exist_ok=True)
        p.write_text("".join(json.dumps(r) + "\n" for r in rows if s.owns(r["doc"])))
    assert merge_jsonl(base, 3, key=lambda r: (r["doc"], r["chunk"])) == 10
    assert [json.loads(x) for x in base.read_text().splitlines()] == rows


def test_merge_names_missing_shard(tmp_path):
    with pytest.raises(ShardError, match="shard-00001-of-00002"):
        shard_path(tmp_path / "a.jsonl", Shard(0, 2)).parent.mkdir()
        shard_path(tmp_path / "a.jsonl", Shard(0, 2)).write_text("")
        merge_jsonl(tmp_path / "a.jsonl", 2, key=lambda r: r["i"])


def test_merge_counts():
    assert merge_counts([{"read": 2, "dropped": {"short": 1}, "v": "x"},
                         {"read": 3, "dropped": {"short": 1, "lang": 2}, "v": "x"}]) == \
        {"read": 5, "dropped": {"short": 2, "lang": 2}, "v": "x"}
