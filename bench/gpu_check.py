"""Real scale on one GPU in one command (issue 17): random-weight full-size models, memory caps, attention
backends, block swap, fp8, LoRA training, and ``pytest -m cuda``.

    python bench/gpu_check.py                 # on a CUDA machine; about 8 minutes in all
    python bench/gpu_check.py --tiny          # the same code on the CPU with the tiny test models (CI)
    python bench/gpu_check.py --parts dit_backends,fp8 --out /tmp/gpu

Parts (``bench/gpu_check_parts.py``), each with its own time box; on a GPU each runs in its own process (a
fresh CUDA allocator, so one part's memory cap or OOM cannot touch the next), and the whole run stops starting
parts when ``--budget`` seconds are spent. After every part — and inside a part after every measured row —
``results.json`` and ``results.md`` in ``--out`` (default ``bench/out/gpu_check``, or ``…-tiny``) are rewritten,
so a run cut off at any point still reports what it measured. Missing optional packages (PyAV, diffusers,
xformers, flash-attn, sageattention) skip their rows with the reason and how to carry the wheel.

``--tiny`` runs on the CPU: memory caps need CUDA, so they are reported as not applied, peaks are the live
tensors a stage adds (``comfy_kiwi.testing.memory_probe``) and there is no ratio to the planner (whose
predictions are for the full-size models).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402

import gpu_check_models as M  # noqa: E402
from gpu_check_parts import PARTS, OutOfTime, Skipped  # noqa: E402

OPTIONAL = {"av": "PyAV (video files; the check itself does not need it)",
            "diffusers": "diffusers (ours/diffusers row)", "xformers": "xformers backend",
            "flash_attn": "flash-attn backend", "sageattention": "sage backend",
            "transformers": "transformers (Qwen2.5-VL; the edit parts need it)"}


class Run:
    """One part's context: the scale, the device, its deadline and the rows it has recorded."""

    def __init__(self, scale, device, deadline: float, result_path: Path | None = None):
        self.scale, self.device, self.deadline = scale, torch.device(device), deadline
        self.rows: list[dict] = []
        self.result_path = result_path

    def left(self) -> float:
        return self.deadline - time.time()

    def tick(self, what: str) -> None:
        if time.time() > self.deadline:
            raise OutOfTime(f"time box ran out after: {what}")

    def row(self, **fields) -> None:
        self.rows.append(fields)
        if self.result_path is not None:
            self.result_path.write_text(json.dumps({"rows": self.rows}, indent=1, default=str))


def run_part(name: str, scale, device, deadline: float, result_path: Path | None = None) -> dict:
    run = Run(scale, device, deadline, result_path)
    fn = PARTS[name][0]
    start = time.time()
    status, reason = "ok", ""
    try:
        fn(run)
    except Skipped as e:
        status, reason = "skipped", str(e)
    except OutOfTime as e:
        status, reason = "timeout", str(e)
    except torch.cuda.OutOfMemoryError as e:
        status, reason = "out of memory", str(e).splitlines()[0][:300]
    except Exception as e:  # noqa: BLE001 - a failing part is reported, the next one still runs
        status, reason = "failed", f"{type(e).__name__}: {e}"[:300] + "\n" + traceback.format_exc(limit=4)[-800:]
    out = {"part": name, "status": status, "reason": reason, "seconds": round(time.time() - start, 1),
           "rows": run.rows}
    if result_path is not None:
        result_path.write_text(json.dumps(out, indent=1, default=str))
    return out


def _in_subprocess(name: str, out_dir: Path, box: float) -> dict:
    """A part in its own process (GPU runs): killed ``box`` + 10 s after start if its own checks did not stop it."""
    result = out_dir / f"part-{name}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--result", str(result),
           "--deadline", str(time.time() + box)]
    start = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=box + 10)
        tail = (proc.stdout + proc.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        proc, tail = None, "killed at its time box"
    data = json.loads(result.read_text()) if result.exists() else {}
    if "status" not in data:   # the child died (killed, crashed, CUDA error) before finishing: keep its rows
        data = {"part": name, "status": "timeout" if proc is None else f"crashed (exit {proc.returncode})",
                "reason": tail, "rows": data.get("rows", [])}
    data["seconds"] = round(time.time() - start, 1)
    return data


def environment(device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
           "packages": {k: ("installed" if importlib.util.find_spec(k) else f"missing: {v}")
                        for k, v in OPTIONAL.items()}}
    if torch.device(device).type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_GiB=round(p.total_memory / 1024 ** 3, 1), cuda=torch.version.cuda)
    return env


def write_report(out_dir: Path, report: dict) -> None:
    (out_dir / "results.json").write_text(json.dumps(report, indent=1, default=str))
    env = report["environment"]
    lines = [f"# GPU check ({report['scale']})", "",
             f"{env.get('gpu', 'CPU')} · torch {env['torch']} · CUDA {env.get('cuda', '-')} · "
             f"started {report['started']} · {report['elapsed_s']} s of {report['budget_s']} s", "",
             "Packages: " + "; ".join(f"{k} {v}" for k, v in env["packages"].items()), ""]
    for part in report["parts"]:
        lines += [f"## {part['part']}: {part['status']} ({part['seconds']} s)", ""]
        if part.get("reason"):
            lines += ["    " + line for line in str(part["reason"]).strip().splitlines()[:8]] + [""]
        rows = part.get("rows") or []
        if rows:
            cols = list(dict.fromkeys(k for r in rows for k in r))
            lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(str(r.get(c, "")).replace("|", "/") for c in cols) + " |" for r in rows]
            lines.append("")
    (out_dir / "results.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models on the CPU (the CI check of this script)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default bench/out/gpu_check[-tiny])")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of: {', '.join(PARTS)}")
    ap.add_argument("--budget", type=float, default=480, help="seconds for the whole run (default 480 = 8 min)")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    scale = M.TINY if args.tiny else M.FULL
    if args.part:                               # a child process: one part on the GPU
        run_part(args.part, scale, "cuda", args.deadline, args.result)
        return 0
    if not args.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --tiny for the CPU version of the same check.")
        return 2
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        print(f"gpu_check: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}.")
        return 2
    device = "cpu" if args.tiny else "cuda"
    out_dir = args.out or HERE / "out" / ("gpu_check-tiny" if args.tiny else "gpu_check")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    report = {"scale": scale.label, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(start)),
              "budget_s": args.budget, "elapsed_s": 0, "environment": environment(device), "parts": []}
    for name in names:
        left = args.budget - (time.time() - start)
        box = min(PARTS[name][1], left)
        if box < 10:
            result = {"part": name, "status": "not run", "reason": "the run's time budget is spent", "rows": []}
        elif args.tiny:
            result = run_part(name, scale, device, time.time() + box)
        else:
            result = _in_subprocess(name, out_dir, box)
        report["parts"].append(result)
        report["elapsed_s"] = round(time.time() - start, 1)
        write_report(out_dir, report)
        print(f"{name}: {result['status']} ({result.get('seconds', 0)} s)", flush=True)
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
