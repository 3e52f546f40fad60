"""The one-command GPU check behind ``scripts/gpu_check.sh`` (issue 16, item 5): everything in one JSON.

Steps, most important first; each runs in a subprocess of its own under a time limit, and a step that fails
or runs out of time is recorded as such while the next one still runs:

``env``            torch, CUDA, transformers, the GPU, and which of flash-attn, mamba-ssm, causal-conv1d import.
``verify_float32`` ``hybridreduce verify --all --device cuda --dtype float32 --json``.
``verify_bfloat16`` the same in bfloat16 (tolerances follow the dtype: ``hybridreduce.checks.TOLERANCES``).
``bench_*``        :func:`hybridreduce.bench.run_scale` on a Nemotron-H-8B-shaped model at its real width
                   (:func:`~hybridreduce.bench.nemotron_h_8b`: 52 blocks, hidden 4096) in bfloat16 at 16k and 64k
                   visual tokens, keep 0.25: SDPA on the Mamba path transformers picks (mamba-ssm's kernels where
                   they import), then flash attention if it imports, then SDPA on the other Mamba path.
``scores_kernel_vs_torch``  where mamba-ssm and causal-conv1d import: ``capture`` on the same 8B-shaped model
                   (float32, 4k visual tokens, both Mamba scorers) once on the kernel path and once with the
                   kernels blocked (transformers' torch path). Block 0 is Mamba and sees the same input on both
                   paths, so its scores must be identical (the taps fire on the kernel path and read the same
                   ``in_proj`` output); later blocks differ only by the two scans' rounding.

``--cpu-smoke`` runs the same steps on the CPU at tiny sizes (a dry run of this script: the subprocesses, the
workers, the comparison and the JSON), in about a minute. Nothing is compiled or installed.

Usage::

    bash scripts/gpu_check.sh                       # writes runs/gpu_check.json
    bash scripts/gpu_check.sh --out runs/gpu.json --budget 420
    bash scripts/gpu_check.sh --cpu-smoke --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The Mamba kernel packages transformers uses when they import; blocked in a worker to force the torch path.
KERNEL_PACKAGES = ("mamba_ssm", "causal_conv1d")


# --------------------------------------------------------------------------------------------------
# Workers (run in their own process: ``gpu_check.py --worker NAME ...``)
# --------------------------------------------------------------------------------------------------
def _block_kernels() -> None:
    """Make ``import mamba_ssm`` / ``import causal_conv1d`` fail, before transformers is imported.

    transformers binds its Mamba functions at import: to mamba-ssm's kernels when the package imports, to its own
    torch implementation otherwise. A ``None`` entry in ``sys.modules`` makes the import raise and
    ``importlib.util.find_spec`` answer ``None``.
    """
    assert "transformers" not in sys.modules, "block the kernels before transformers is imported"
    for name in KERNEL_PACKAGES:
        sys.modules[name] = None


def _imports(name: str) -> str | None:
    """``None`` when ``import name`` works here, else the error's first line."""
    import importlib

    try:
        importlib.import_module(name)
    except Exception as exc:  # an ImportError, or a binary built for another torch/CUDA
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return None


def worker_env(args) -> dict:
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "cuda_available": torch.cuda.is_available(),
        "imports": {name: _imports(name) or "ok" for name in ("flash_attn", *KERNEL_PACKAGES)},
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
        }
    return info


def _bench_config(args, visual: int):
    from hybridreduce.bench import nemotron_h_8b

    if args.smoke or args.tiny:  # the 52-block pattern at a width a CPU runs in seconds
        tiny = dict(hidden=64, attn_heads=4, kv_heads=2, head_dim=16, mamba_head_dim=16, ssm_state=16, n_groups=2)
        return nemotron_h_8b(visual, **tiny, intermediate=128, chunk_size=16, vocab=256, attn_implementation=args.attn)
    return nemotron_h_8b(visual, attn_implementation=args.attn)


def worker_bench(args) -> dict:
    """:func:`~hybridreduce.bench.run_scale`, one point at a time on one model; the result file is rewritten after
    every point, so that a step stopped by its time limit still reports the points it finished."""
    import torch

    from hybridreduce.bench import build_bench_model, run_scale

    points = [int(x) for x in args.points.split(",")]
    cfg = _bench_config(args, max(points))
    start = time.perf_counter()
    model = build_bench_model(cfg, device=args.device, dtype=getattr(torch, args.dtype))
    out = {"build_seconds": time.perf_counter() - start, "results": []}
    for v in points:
        say = lambda m, v=v: print(f"[bench] {v}: {m}", file=sys.stderr, flush=True)  # noqa: E731
        (r,) = run_scale(cfg, [v], "progressive", 0.25, args.repeats, args.decode_steps, say, model=model)
        out["results"].append(r.to_dict())
        out["seconds"] = time.perf_counter() - start
        if torch.cuda.is_available() and args.device.startswith("cuda"):
            out["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        Path(args.result).write_text(json.dumps(out, indent=1))
    return out


def worker_scores(args) -> dict:
    """Scores of every scoring block under ``capture`` (both Mamba scorers), saved to ``args.scores``."""
    import torch

    from hybridreduce import capture
    from hybridreduce.bench import bench_prompt, build_bench_model, mamba_path

    cfg = _bench_config(args, args.tokens)
    model = build_bench_model(cfg, seed=0, device=args.device, dtype=getattr(torch, args.dtype))
    ids, vm = bench_prompt(cfg, device=args.device)
    saved, counts = {}, {}
    for scorer in ("decay_free", "exact"):
        with capture(model, vm, scorer=scorer) as cache, torch.no_grad():
            model(ids, logits_to_keep=1)
        saved[scorer] = {block: s.double().cpu() for block, s in cache.scores.items()}
        counts[scorer] = len(cache.scores)
    torch.save(saved, args.scores)
    weight = model.model.layers[0].mixer.in_proj.weight
    return {
        "mamba_path": mamba_path(model),
        "scored_blocks": counts,
        "weight_checksum": float(weight.detach().double().sum()),
        "visual_tokens": args.tokens,
    }


def compare_scores(a_path: str, b_path: str) -> dict:
    """Block by block: the largest difference (absolute, and relative to the block's largest score) and the overlap
    of the top quarter of tokens. Passes when the blocks match, block 0 is identical and the rest are close."""
    import torch

    a, b = torch.load(a_path), torch.load(b_path)
    report = {"passed": True}
    for scorer in a:
        blocks = sorted(a[scorer])
        if blocks != sorted(b[scorer]):
            report[scorer] = {"error": f"different scored blocks: {blocks} vs {sorted(b[scorer])}"}
            report["passed"] = False
            continue
        rows = []
        for block in blocks:
            x, y = a[scorer][block], b[scorer][block]
            k = max(1, x.shape[1] // 4)
            top_x, top_y = set(x.topk(k, dim=1).indices[0].tolist()), set(y.topk(k, dim=1).indices[0].tolist())
            diff = float((x - y).abs().max())
            rows.append(
                {
                    "block": block,
                    "max_abs": diff,
                    "max_rel": diff / float(x.abs().max()),
                    "topk_overlap": len(top_x & top_y) / k,
                }
            )
        first = rows[0]
        ok = first["max_abs"] <= 1e-6 and all(r["max_rel"] <= 1e-3 and r["topk_overlap"] >= 0.95 for r in rows)
        report[scorer] = {
            "passed": ok,
            "first_block_max_abs": first["max_abs"],
            "worst_max_rel": max(r["max_rel"] for r in rows),
            "worst_topk_overlap": min(r["topk_overlap"] for r in rows),
            "blocks": rows,
        }
        report["passed"] &= ok
    return report


WORKERS = {"env": worker_env, "bench": worker_bench, "scores": worker_scores}


# --------------------------------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------------------------------
class Runner:
    """Runs the steps as subprocesses within a total time budget and collects their results."""

    def __init__(self, budget: float, python: str, smoke: bool, work: Path) -> None:
        self.deadline = time.monotonic() + budget
        self.python = python
        self.smoke = smoke
        self.work = work
        self.steps: list[dict] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str], limit: float, need: float = 20.0, parse=None) -> dict:
        """Run ``cmd`` for at most ``limit`` seconds (less if the budget ends first); skip it when under ``need``."""
        step = {"name": name, "cmd": " ".join(cmd)}
        self.steps.append(step)
        timeout = min(limit, self.left())
        if timeout < need:
            step["status"] = f"skipped: {self.left():.0f} s of the budget left, the step needs about {need:.0f}"
            print(f"[gpu_check] {name}: {step['status']}", file=sys.stderr, flush=True)
            return step
        print(f"[gpu_check] {name} (at most {timeout:.0f} s)", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            step.update(status="timeout", seconds=round(time.monotonic() - start, 1))
            step["stderr_tail"] = _tail(exc.stderr)
            if parse is not None:
                try:  # what a worker wrote before its time ran out (the bench writes after every point)
                    step["result"] = parse(None)
                    step["status"] = "timeout (partial result)"
                except Exception:
                    pass
            return step
        step.update(rc=proc.returncode, seconds=round(time.monotonic() - start, 1))
        try:
            step["result"] = parse(proc) if parse else proc.stdout
            step["status"] = "ok" if proc.returncode == 0 else f"exit status {proc.returncode}"
        except Exception as exc:  # the step's output is not what it should be: keep its stderr
            step["status"] = f"unreadable output: {type(exc).__name__}: {exc}"
        if step["status"] != "ok":
            step["stderr_tail"] = _tail(proc.stderr)
        print(f"[gpu_check] {name}: {step['status']} in {step['seconds']} s", file=sys.stderr, flush=True)
        return step

    def worker(self, name: str, kind: str, extra: list[str], limit: float, need: float = 30.0) -> dict:
        result = self.work / f"{name}.json"
        result.unlink(missing_ok=True)  # never read an earlier run's file
        cmd = [self.python, str(Path(__file__).resolve()), "--worker", kind, "--result", str(result), *extra]
        if self.smoke:
            cmd.append("--cpu-smoke")
        return self.run(name, cmd, limit, need, parse=lambda proc: json.loads(result.read_text()))


def _tail(text, n: int = 2000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


def _verify_rows(proc) -> dict:
    rows = json.loads(proc.stdout)
    failed = [f"{r['arch']}/{r['check']}" for r in rows if not r["passed"]]
    return {"passed": len(rows) - len(failed), "failed": failed, "rows": rows}


def _gib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**30, 2)


def summarise(steps: list[dict]) -> dict:
    """The headline figures: verify counts, one line per bench point, the score comparison."""
    out: dict = {"bench": []}
    for step in steps:
        result = step.get("result")
        if step["name"].startswith("verify_"):
            out[step["name"]] = (
                {"passed": result["passed"], "failed": result["failed"]} if isinstance(result, dict) else step["status"]
            )
        elif step["name"].startswith("bench_") and isinstance(result, dict):
            for r in result["results"]:
                out["bench"].append(
                    {
                        "variant": step["name"],
                        "visual_tokens": r["visual_tokens"],
                        "full_s": round(r["full_s"], 4),
                        "reduced_s": round(r["reduced_s"], 4),
                        "speedup": round(r["speedup"], 3),
                        "ideal_speedup": round(r["ideal_speedup"], 3),
                        "efficiency": round(r["efficiency"], 3),
                        "efficiency_timed": round(r["efficiency_timed"], 3),
                        "peak_gib": [_gib(r["peak_bytes_full"]), _gib(r["peak_bytes_reduced"])],
                        "decode_tok_s": [round(r["decode_tok_s_full"], 1), round(r["decode_tok_s_reduced"], 1)],
                        "scoring_overhead_frac": round(r["scoring_overhead_frac"], 4),
                    }
                )
        elif step["name"] == "scores_kernel_vs_torch":  # without the per-block rows (they are in the step)
            out["scores_kernel_vs_torch"] = (
                {k: ({kk: vv for kk, vv in v.items() if kk != "blocks"} if isinstance(v, dict) else v)
                 for k, v in result.items()}
                if isinstance(result, dict)
                else step["status"]
            )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/gpu_check.json", help="the JSON to write (default runs/gpu_check.json)")
    parser.add_argument("--budget", type=float, default=450, help="total seconds for every step (default 450)")
    parser.add_argument("--cpu-smoke", dest="smoke", action="store_true", help="the same steps, tiny, on the CPU")
    parser.add_argument("--python", default=sys.executable, help="the interpreter the steps run with")
    # Worker arguments (internal).
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--scores", help=argparse.SUPPRESS)
    parser.add_argument("--attn", default="sdpa", help=argparse.SUPPRESS)
    parser.add_argument("--mamba", default="default", choices=("default", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--points", default="16384,65536", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=4096, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--decode-steps", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # --cpu-smoke's sizes, on --device
    args = parser.parse_args(argv)

    if args.worker:
        if args.mamba == "torch":
            _block_kernels()
        if args.smoke:
            args.device = "cpu"
        Path(args.result).write_text(json.dumps(WORKERS[args.worker](args), indent=1))
        return 0

    work = Path(args.out).resolve().parent / (Path(args.out).stem + "_parts")
    work.mkdir(parents=True, exist_ok=True)
    run = Runner(args.budget, args.python, args.smoke, work)
    started = time.time()
    env = run.worker("env", "env", [], limit=60, need=5)
    imports = (env.get("result") or {}).get("imports", {})
    cuda = bool((env.get("result") or {}).get("cuda_available"))
    if not cuda and not args.smoke:
        print("[gpu_check] no CUDA GPU here: run on a GPU machine, or pass --cpu-smoke for a dry run", file=sys.stderr)
    device = "cpu" if args.smoke else "cuda"
    kernels = cuda and not args.smoke and all(imports.get(p) == "ok" for p in KERNEL_PACKAGES)
    flash = cuda and not args.smoke and imports.get("flash_attn") == "ok"

    # 1. The invariants on the device, in float32 and bfloat16.
    for dtype in ("float32", "bfloat16"):
        cmd = [args.python, "-m", "hybridreduce", "verify", "--all", "--device", device, "--dtype", dtype, "--json"]
        run.run(f"verify_{dtype}", cmd, limit=150, need=20, parse=_verify_rows)

    # 2. The bench on the 8B shape: the default path first, then flash attention, then the other Mamba path.
    points = "64,128" if args.smoke else "16384,65536"
    bench = ["--points", points, "--dtype", "bfloat16", "--repeats", "2", "--decode-steps", "8"]
    default_mamba = "kernel" if kernels else "torch"
    run.worker(f"bench_sdpa_{default_mamba}", "bench", [*bench, "--attn", "sdpa"], limit=150, need=40)

    # 3. Scores on the kernel path against the torch path (the taps must not depend on the path).
    if kernels or args.smoke:
        extra = ["--tokens", "64" if args.smoke else "4096", "--dtype", "float32"]
        paths = {}
        for mamba in ("default", "torch"):
            paths[mamba] = str(work / f"scores_{mamba}.pt")
            run.worker(f"scores_{mamba}", "scores", [*extra, "--mamba", mamba, "--scores", paths[mamba]], limit=90)
        step = {"name": "scores_kernel_vs_torch"}
        if all(Path(p).is_file() for p in paths.values()):
            try:
                result = compare_scores(paths["default"], paths["torch"])
                sums = [(s.get("result") or {}).get("weight_checksum") for s in run.steps[-2:]]
                result["same_weights"] = sums[0] is not None and sums[0] == sums[1]  # the same seed built both
                result["passed"] &= result["same_weights"]
                step.update(status="ok", result=result)
            except Exception as exc:
                step["status"] = f"comparison failed: {type(exc).__name__}: {exc}"
        else:
            step["status"] = "skipped: a scores worker did not finish"
        run.steps.append(step)
    else:
        skipped = "skipped: mamba-ssm / causal-conv1d do not import"
        run.steps.append({"name": "scores_kernel_vs_torch", "status": skipped})

    if flash:
        run.worker(f"bench_flash_{default_mamba}", "bench", [*bench, "--attn", "flash_attention_2"], limit=150, need=40)
    else:
        run.steps.append({"name": "bench_flash", "status": "skipped: flash_attn does not import" if not args.smoke
                          else "skipped: --cpu-smoke"})  # fmt: skip
    if kernels:
        run.worker("bench_sdpa_torch", "bench", [*bench, "--attn", "sdpa", "--mamba", "torch"], limit=150, need=40)

    steps = run.steps
    verifies = [s for s in steps if s["name"].startswith("verify_")]
    verify_ok = all(isinstance(s.get("result"), dict) and not s["result"]["failed"] for s in verifies)
    scores = next((s for s in steps if s["name"] == "scores_kernel_vs_torch"), {})
    scores_ok = scores.get("status", "").startswith("skipped") or bool((scores.get("result") or {}).get("passed"))
    bench_ok = any(s["name"].startswith("bench_") and isinstance(s.get("result"), dict) for s in steps)
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "mode": "cpu-smoke" if args.smoke else "gpu",
        "host": platform.node(),
        "env": env.get("result"),
        "passed": verify_ok and scores_ok and bench_ok,
        "summary": summarise(steps),
        "steps": steps,
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("mode", "seconds", "passed", "summary")}, indent=1))
    print(f"[gpu_check] wrote {args.out}", file=sys.stderr)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
