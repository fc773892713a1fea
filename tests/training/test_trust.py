"""Trust in checkpoint directories (docs/reliability.md, "Training and checkpoints"): manifests refuse changed
files, loaders refuse pickles that would run code, the non-finite guard, verify's remote code only on request."""
from __future__ import annotations

import json
import re
import pytest

from megatron_huatuo.runtime import run_distributed
from megatron_huatuo.training import manifest as M

import trust_harness


# -- manifest, in this process -----------------------------------------------------------------------------------
def _directory(tmp_path):
    d = tmp_path / "ckpt"
    (d / "sub").mkdir(parents=True)
    (d / "a.distcp").write_bytes(bytes(range(256)) * 1000)
    (d / "sub" / "b.pt").write_bytes(b"b" * 10)
    M.write_manifest(d)
    return d


def test_manifest_lists_sizes_and_independent_checksums(tmp_path):
    import xxhash

    d = _directory(tmp_path)
    body = json.loads((d / M.MANIFEST).read_text())
    expected = xxhash.xxh3_128(bytes(range(256)) * 1000).hexdigest()  # the library itself, on the same bytes
    assert body["files"]["a.distcp"] == {"size": 256000, "xxh3_128": expected}
    assert set(body["files"]) == {"a.distcp", "sub/b.pt"}
    assert M.verify_manifest(d) is True


def test_manifest_mismatches_name_the_file(tmp_path):
    d = _directory(tmp_path)
    data = bytearray((d / "a.distcp").read_bytes())
    data[1234] ^= 1
    (d / "a.distcp").write_bytes(bytes(data))
    with pytest.raises(M.CheckpointIntegrityError, match=r"a\.distcp: xxh3_128 checksum [0-9a-f]+, the manifest "
                                                         r"records [0-9a-f]+"):
        M.verify_manifest(d)
    (d / "a.distcp").write_bytes(bytes(data[:100]))
    with pytest.raises(M.CheckpointIntegrityError, match=r"a\.distcp: size 100 bytes, the manifest records 256000"):
        M.verify_manifest(d)
    (d / "sub" / "b.pt").unlink()
    with pytest.raises(M.CheckpointIntegrityError, match=r"a\.distcp: size 100 .*\(and 1 more problem"):
        M.verify_manifest(d)


def test_directory_without_manifest_is_refused_unless_trusted(tmp_path, capsys):
    d = _directory(tmp_path)
    (d / "c.pt").write_bytes(b"added later")
    with pytest.raises(M.CheckpointIntegrityError, match=r"c\.pt: not listed"):
        M.verify_manifest(d)
    (d / M.MANIFEST).unlink()
    with pytest.raises(M.CheckpointIntegrityError, match="has no huatuo_manifest.json.*--trust-checkpoint"):
        M.verify_manifest(d)
    assert M.verify_manifest(d, trust=True) is False
    assert "warning" in capsys.readouterr().err
    (d / M.MANIFEST).write_text("{not json")
    with pytest.raises(M.CheckpointIntegrityError, match="unreadable checkpoint manifest"):
        M.verify_manifest(d, trust=True)


def test_split_by_size_balances_bytes():
    files = {f"f{i}": {"size": s} for i, s in enumerate([10, 9, 5, 4, 1, 1])}
    parts = M.split_by_size(files, 2)
    assert sorted(sum(parts, [])) == sorted(files)
    assert [sum(files[n]["size"] for n in p) for p in parts] == [15, 15]


# -- verify's remote code, in this process --------------------------------------------------------------------
def test_verify_runs_remote_code_only_when_asked(tmp_path, capsys):
    from checkpoints_tools import cli

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "baichuan", "architectures": ["BaichuanForCausalLM"]}))
    (hf / "modeling_baichuan.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').close()\n")
    for name in ("configuration_baichuan.py", "generation_utils.py", "quantizer.py"):  # all four remote-code files
        (hf / name).write_text("")
    code = cli.main(["verify", "--ckpt", str(tmp_path / "none"), "--hf", str(hf), "--arch", "tiny-baichuan2-7b"])
    assert code == 2
    assert "--trust-remote-code" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()


# -- the loaders on real checkpoints: one spawned process ----------------------------------------------------------
@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    (result,) = run_distributed(trust_harness.load_checks, world_size=1,
                                args=(str(tmp_path_factory.mktemp("trust")),), timeout=400)
    return result


def test_resume_restores_rng_states_through_the_safe_loader(checks):
    assert checks["rng_restored"]


@pytest.mark.parametrize("case, pattern", [
    ("resume_flipped", r"CheckpointIntegrityError.*__0_1\.distcp: xxh3_128 checksum"),
    ("resume_truncated", r"CheckpointIntegrityError.*__0_0\.distcp: size 100 bytes, the manifest records \d+"),
    ("resume_added", r"CheckpointIntegrityError.*extra\.pt: not listed"),
    ("pretrained_flipped", r"CheckpointIntegrityError.*__0_1\.distcp: xxh3_128 checksum"),
    ("resume_legacy", r"CheckpointIntegrityError.*has no huatuo_manifest\.json"),
    ("resume_garbage_metadata", r"UnsafeCheckpointError.*\.metadata: unreadable checkpoint metadata"),
])
def test_changed_or_legacy_checkpoints_are_refused(checks, case, pattern):
    kind, message = checks[case]
    assert re.search(pattern, f"{kind} {message}"), (kind, message)


def test_legacy_checkpoint_loads_when_trusted(checks):
    assert checks["resume_legacy_trusted"] == (None, "")


EXEC = r"refusing to unpickle (builtins\.)?exec"


COMMON = r"(common\.pt|object 'common_state/shard_0_1')"  # megatron-core 0.16 | 0.19 (compat.py)


@pytest.mark.parametrize("kind, what", [("metadata", r"\.metadata: " + EXEC), ("common", COMMON + ": " + EXEC),
                                        ("rng", r"object 'rng_state/shard_0_1': " + EXEC)])
def test_crafted_pickles_are_refused_by_every_loader(checks, kind, what):
    for path in ("resume", "pretrained") if kind != "rng" else ("resume",):
        error, message = checks[f"{kind}_{path}"]
        assert error == "UnsafeCheckpointError" and re.search(what, message), (path, error, message)
    if kind == "rng":  # weights-only loads never ask for the per-rank RNG objects
        assert checks["rng_pretrained"] == (None, "")
    else:
        for cli in ("export", "verify"):
            code, err = checks[f"{kind}_{cli}"]
            assert code == 2 and re.search(what, err) and len(err.strip().splitlines()) == 1, (cli, code, err)
    assert checks["pwned_by_loaders"] == [] and checks["pwned_by_clis"] == []
    assert checks["export_dirs"] == []  # nothing written by a refused export


def test_crafted_pickles_would_run_when_trusted(checks):
    assert checks["pwned_when_trusted"] == ["pwned-common", "pwned-metadata", "pwned-rng"]


def test_export_refuses_flipped_bytes_naming_the_file(checks):
    code, err = checks["flipped_export"]
    assert code == 2 and "__0_1.distcp: xxh3_128 checksum" in err


def test_nonfinite_guard_and_save(checks):
    assert checks["clean_step_finite"] is True
    assert checks["nan_grad_finite"] is False
    assert checks["nan_loss_finite"] is False
    assert checks["stop_after_one"] == (None, "")
    kind, message = checks["stop_after_two"]
    assert kind == "NonFiniteError" and "2 consecutive steps (5-6)" in message and "iteration 1" in message
    kind, message = checks["save_nonfinite"]
    assert kind == "NonFiniteError" and "not saving iteration 2" in message
    assert checks["check_params"][0] == "NonFiniteError"
    names, marker = checks["good_after_nan_save"]
    assert "iter_0000002" not in names and marker == "1"


def test_manifest_command_seals_a_legacy_directory_then_checks_it(tmp_path, capsys):
    from checkpoints_tools import cli

    root = tmp_path / "run"
    d = root / "iter_0000003"
    d.mkdir(parents=True)
    (d / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    (d / "__0_0.distcp").write_bytes(b"weights")
    (root / "latest_checkpointed_iteration.txt").write_text("3\n")
    assert cli.main(["manifest", "--ckpt", str(root)]) == 0
    assert f"wrote {d / M.MANIFEST}" in capsys.readouterr().out
    assert cli.main(["manifest", "--ckpt", str(root)]) == 0
    assert "every file matches" in capsys.readouterr().out
    (d / "__0_0.distcp").write_bytes(b"weightz")
    assert cli.main(["manifest", "--ckpt", str(root)]) == 2
    assert "__0_0.distcp: xxh3_128 checksum" in capsys.readouterr().err
