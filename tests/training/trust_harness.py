"""Work for the trust tests (docs/reliability.md) that needs megatron-core's process groups: run in one spawned
process (module level, so the spawn harness can import it)."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import torch


class Payload:
    """Pickles to ``exec(<code that creates PATH>)``: what a crafted checkpoint would run when unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').close()",)


def _fresh_port() -> None:
    from megatron_huatuo.runtime.distributed import free_port

    os.environ["MASTER_PORT"] = str(free_port())  # each CLI call below creates and destroys its own group


def _build():
    from megatron_huatuo.config.recipe import load_recipe
    from megatron_huatuo.runtime import initialize
    from megatron_huatuo.training.loop import _build as build

    recipe = load_recipe(None, ["parallel.tp=1", "train.seq_length=16", "train.global_batch=2", "train.micro_batch=1"])
    _fresh_port()
    initialize(seed=3)
    return build(recipe)


def _backward(arch, models) -> None:
    """One real forward/backward of a random row: gradients in megatron-core's DDP buffers."""
    batch = torch.randint(0, arch.vocab_size, (1, 17))
    for model in models:
        model.zero_grad_buffer()
    models[0](batch[:, :-1], torch.arange(16).unsqueeze(0), None, labels=batch[:, 1:]).sum().backward()


def _call(fn, *args, **kwargs):
    """(exception type name or None, message): what a loader raised."""
    try:
        fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - the test inspects whatever was raised
        return type(exc).__name__, str(exc)
    return None, ""


def _cli(argv):
    """``python -m checkpoints_tools ARGV`` in this process: (exit code, stderr)."""
    from checkpoints_tools import cli

    _fresh_port()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, err.getvalue()


def _crafted(root: Path, name: str, how) -> Path:
    """A copy of the good checkpoint.dir whose iter_0000001 ``how`` changes; the manifest is rewritten to match,
    as whoever crafted it would do (the loader, not the manifest, must refuse it)."""
    from megatron_huatuo.training.manifest import write_manifest

    out = root / name
    shutil.copytree(root / "good", out)
    how(out / "iter_0000001")
    write_manifest(out / "iter_0000001")
    return out


def load_checks(tmp: str) -> dict:
    """Save a real checkpoint (trainer's save), then load good, legacy, byte-flipped and crafted copies through
    resume (``checkpointing.load``), ``checkpoint.pretrained``, ``export`` and ``verify``; report what happened."""
    from megatron_huatuo.training import checkpointing
    from megatron_huatuo.training.nonfinite import NonFiniteGuard, check_finite_parameters

    root = Path(tmp)
    arch, config, chunks, models, optimizer, scheduler = _build()
    out: dict = {}
    _backward(arch, models)
    optimizer.step()  # the trainer saves after a step: the optimizer then has state to save
    expected_rng = checkpointing.capture_rng()
    checkpointing.save(str(root / "good"), 1, chunks, optimizer, scheduler, consumed_samples=2)
    state = checkpointing.load(str(root / "good"), 1, chunks, optimizer, scheduler)
    rng = state["rng"]
    out["rng_restored"] = (rng is not None and rng["random"] == expected_rng["random"]
                           and rng["numpy"][0] == expected_rng["numpy"][0]
                           and (rng["numpy"][1] == expected_rng["numpy"][1]).all()
                           and torch.equal(rng["torch"], expected_rng["torch"]))

    # a flipped byte in the middle of a shard, a truncated shard, a file added after the save
    def flip(d):
        shard = d / "__0_1.distcp"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))

    for name, how in [("flipped", flip),
                      ("truncated", lambda d: os.truncate(d / "__0_0.distcp", 100)),
                      ("added", lambda d: (d / "extra.pt").write_bytes(b"x"))]:
        shutil.copytree(root / "good", root / name)
        how(root / name / "iter_0000001")
        out[f"resume_{name}"] = _call(checkpointing.load, str(root / name), 1, chunks, optimizer, scheduler)
    out["pretrained_flipped"] = _call(checkpointing.load_pretrained, str(root / "flipped" / "iter_0000001"), chunks)

    # legacy: no manifest -> refused; trusted -> loads
    shutil.copytree(root / "good", root / "legacy")
    (root / "legacy" / "iter_0000001" / "huatuo_manifest.json").unlink()
    out["resume_legacy"] = _call(checkpointing.load, str(root / "legacy"), 1, chunks, optimizer, scheduler)
    out["resume_legacy_trusted"] = _call(checkpointing.load, str(root / "legacy"), 1, chunks, optimizer, scheduler,
                                         trust=True)

    # crafted pickles, each with a matching manifest
    def evil_metadata(d):
        (d / ".metadata").write_bytes(__import__("pickle").dumps(Payload(root / "pwned-metadata")))

    garbage = _crafted(root, "garbage-metadata", lambda d: (d / ".metadata").write_bytes(b"\x80\x04garbage"))
    out["resume_garbage_metadata"] = _call(checkpointing.load, str(garbage), 1, chunks, optimizer, scheduler)
    crafted = {"metadata": _crafted(root, "evil-metadata", evil_metadata)}
    # the common state (common.pt with megatron-core 0.16, the 'common_state' object inside *.distcp with 0.19)
    # and a per-rank RNG object (a ShardedObject inside *.distcp), each holding an object that runs code
    scheduler_state = scheduler.state_dict
    scheduler.state_dict = lambda: {**scheduler_state(), "note": Payload(root / "pwned-common")}
    try:
        checkpointing.save(str(root / "evil-common"), 1, chunks, optimizer, scheduler, consumed_samples=2)
    finally:
        del scheduler.state_dict
    crafted["common"] = root / "evil-common"
    original = checkpointing.capture_rng
    checkpointing.capture_rng = lambda: {"random": Payload(root / "pwned-rng")}
    try:
        checkpointing.save(str(root / "evil-rng"), 1, chunks, optimizer, scheduler, consumed_samples=2)
    finally:
        checkpointing.capture_rng = original
    crafted["rng"] = root / "evil-rng"

    for kind, ckpt in crafted.items():
        out[f"{kind}_resume"] = _call(checkpointing.load, str(ckpt), 1, chunks, optimizer, scheduler)
        out[f"{kind}_pretrained"] = _call(checkpointing.load_pretrained, str(ckpt / "iter_0000001"), chunks)
    out["pwned_by_loaders"] = sorted(p.name for p in root.glob("pwned-*"))

    # non-finite: a NaN gradient is caught by the guard; a NaN weight is never saved and latest does not move
    _backward(arch, models)
    guard = NonFiniteGuard(2)
    out["clean_step_finite"] = guard.step_is_finite(models, torch.tensor(3.0), torch.device("cpu"))
    next(iter(models[0].parameters())).main_grad.view(-1)[0] = float("nan")
    out["nan_grad_finite"] = guard.step_is_finite(models, torch.tensor(3.0), torch.device("cpu"))
    for model in models:
        model.zero_grad_buffer()
    out["nan_loss_finite"] = guard.step_is_finite(models, torch.tensor(float("inf")), torch.device("cpu"))
    guard.count_skip()
    out["stop_after_one"] = _call(guard.stop_if_exceeded, 5, 1)
    guard.count_skip()
    out["stop_after_two"] = _call(guard.stop_if_exceeded, 6, 1)
    with torch.no_grad():
        next(iter(chunks[0].parameters())).view(-1)[0] = float("inf")
    out["save_nonfinite"] = _call(checkpointing.save, str(root / "good"), 2, chunks, optimizer, scheduler, 4)
    out["check_params"] = _call(check_finite_parameters, chunks, "test")
    out["good_after_nan_save"] = (sorted(p.name for p in (root / "good").iterdir()),
                                  (root / "good" / checkpointing.MARKER).read_text().strip())

    # export and verify (the CLIs; each creates and destroys its own process group, so they come last)
    hf = root / "hf-llama"  # verify refuses the megatron side before it loads HF weights
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    for kind in ("metadata", "common"):  # (the per-rank RNG objects are read by resume only)
        ckpt = str(crafted[kind])
        out[f"{kind}_export"] = _cli(["export", "--ckpt", ckpt, "--arch", "tiny-baichuan2-7b",
                                      "--out", str(root / f"export-{kind}")])
        out[f"{kind}_verify"] = _cli(["verify", "--ckpt", ckpt, "--hf", str(hf), "--arch", "tiny-baichuan2-7b",
                                      "--tokens", "1", "2", "3"])
    out["flipped_export"] = _cli(["export", "--ckpt", str(root / "flipped"), "--arch", "tiny-baichuan2-7b",
                                  "--out", str(root / "export-flipped")])
    out["pwned_by_clis"] = sorted(p.name for p in root.glob("pwned-*"))
    out["export_dirs"] = sorted(p.name for p in root.glob("export-*"))
    # the crafted directories, trusted: megatron-core's own unpickling runs each payload (the crafting is real)
    arch, config, chunks, models, optimizer, scheduler = _build()
    for kind, ckpt in crafted.items():
        _call(checkpointing.load, str(ckpt), 1, chunks, optimizer, scheduler, trust=True)
    out["pwned_when_trusted"] = sorted(p.name for p in root.glob("pwned-*"))
    return out
