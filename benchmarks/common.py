"""Helpers shared by the adkernels benchmarks.

Everything a benchmark reports is measured in the same run, on the same machine, so ratios
(fused vs eager vs torch.compile vs the memory-bandwidth floor) are comparable even where
absolute times are not.

- Timing (:func:`time_fns`): warmup calls, then ``repeats`` rounds in which every variant runs
  once, round robin. The median is reported with min and max. Round robin spreads slow
  periods (another process compiling on a small box) over all variants instead of penalizing
  whichever one happened to run during them.
- Bandwidth floor (:func:`copy_probe`, :func:`copy_bandwidth`): bytes moved (read + written)
  per second by ``dst.copy_(src)`` on a buffer the size of the benchmarked tensors. An op that must read R
  bytes and write W bytes cannot beat ``(R + W) / copy_bandwidth``. Writes pay the same
  read-for-ownership in the op as in the copy, so the two are counted the same way.
- Exp throughput (:func:`exp_cache_probe`, :func:`exp_rate_in_cache`): ``torch.exp`` over an
  L2-resident buffer on one thread, repeated, times the thread count, gives the compute-bound
  rate of the SLEEF exp that both torch and the adkernels CPU kernels use
  (``Vectorized<float>::exp``). ``exps / rate`` is an exp-bound time.
- First touch (:func:`fresh_write_probe`): writing a new large buffer against writing an
  existing one; outputs of CPU ops are fresh mappings, so each pays page faults.
- Peak memory (:func:`peak_memory`): on CUDA, ``torch.cuda.max_memory_allocated`` over the
  call minus what was allocated before it. On CPU tracemalloc does not see torch's
  allocations, so the call runs in a fresh subprocess: inputs are built, a small warmup
  initializes the libraries, the process's resident high-water mark is reset (``5`` written to
  ``/proc/self/clear_refs``), and the result is ``VmHWM - VmRSS`` read from
  ``/proc/self/status`` after and before the call. The child runs with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so every buffer of 64 KiB or more is its own mapping and
  goes back to the OS when freed: resident memory then follows the live tensors, and the
  peak is physical memory touched by the call (outputs and gradients included), nothing
  estimated. It is whole-process memory, so library scratch space is counted too.
- Output: :func:`write_csv`, :func:`print_table`, :func:`env_info`; charts with
  :func:`save_bar_chart` (one grouped bar chart per figure) or :func:`grouped_bars` (the bars on
  an axis of a figure the caller lays out).
"""
from __future__ import annotations

import csv
import gc
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parent.parent


# ---- devices ----------------------------------------------------------------------------------

def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}[dtype]


# ---- timing -----------------------------------------------------------------------------------

@dataclass
class Timing:
    """Times of one variant in milliseconds."""

    times_ms: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms) if self.times_ms else float("nan")

    @property
    def min(self) -> float:
        return min(self.times_ms) if self.times_ms else float("nan")

    @property
    def max(self) -> float:
        return max(self.times_ms) if self.times_ms else float("nan")

    @property
    def spread(self) -> float:
        """(max - min) / median: above ~0.3 the machine was probably busy."""
        m = self.median
        return (self.max - self.min) / m if m and m == m else float("nan")


def time_fns(fns: Dict[str, Callable[[], object]], *, warmup: int = 1, repeats: int = 5,
             device="cpu") -> Dict[str, Timing]:
    """Median-of-``repeats`` wall time of each callable, run round robin after ``warmup`` calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
        sync(device)
    out = {name: Timing() for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            out[name].times_ms.append((time.perf_counter() - t0) * 1e3)
    return out


# ---- floors -----------------------------------------------------------------------------------
# Each *_probe returns (callable, amount) so a benchmark can time it round robin with the ops
# it is compared with (same load on the machine); the measure_* helpers time them alone.

def copy_probe(nbytes: int, device="cpu"):
    """``dst.copy_(src)`` of ``nbytes`` bytes (fp32 buffers); amount = bytes moved (read + write)."""
    n = max(1, int(nbytes) // 4)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    fn = lambda: dst.copy_(src)  # noqa: E731
    fn.buffers = (src, dst)
    return fn, 2 * n * 4


def exp_cache_probe(device="cpu", *, numel: int = 1 << 16, calls: int = 100):
    """``torch.exp`` (fp32) over a cache-resident buffer, ``calls`` times.

    Returns (callable, amount): amount / time is the compute-bound exp rate of all threads.

    On CPU the probe runs on one thread (256 KiB in, 256 KiB out: L2 resident) and the rate is
    multiplied by ``torch.get_num_threads()``: the compute-bound rate of all threads without
    the thread pool's fork/join per call, which dominates small calls (and grows without bound
    when another process holds a core). On CUDA it is a plain in-cache loop.
    """
    x = torch.randn(numel, device=device)
    y = torch.empty_like(x)
    if torch.device(device).type != "cpu":
        def fn():
            for _ in range(calls):
                torch.exp(x, out=y)
        return fn, numel * calls
    threads = torch.get_num_threads()

    def fn():
        torch.set_num_threads(1)
        try:
            for _ in range(calls):
                torch.exp(x, out=y)
        finally:
            torch.set_num_threads(threads)
    return fn, numel * calls * threads


def exp_big_probe(src: torch.Tensor, dst: torch.Tensor):
    """``torch.exp(src, out=dst)`` over a large buffer (streams memory as well as computing)."""
    return (lambda: torch.exp(src, out=dst)), src.numel()


def fresh_write_probe(nbytes: int, device="cpu"):
    """Allocate and write a new ``nbytes`` buffer, as an op returning a new tensor does.

    Compared with writing an existing buffer (``copy_probe``'s dst.fill_) it shows what
    first-touch costs (page faults and zeroing by the OS: buffers this large are fresh mmaps
    on every call with glibc malloc).
    """
    n = max(1, int(nbytes) // 4)
    return (lambda: torch.empty(n, device=device).fill_(1.0)), n * 4


def copy_bandwidth(nbytes: int, device="cpu", *, warmup: int = 1, repeats: int = 5) -> Dict[str, float]:
    """Bytes moved per second (read + write) by ``dst.copy_(src)`` of ``nbytes`` bytes.

    Returns ``{"bytes_per_s": ..., "ms": median copy time, "spread": ...}``.
    """
    fn, moved = copy_probe(nbytes, device)
    t = time_fns({"copy": fn}, warmup=warmup, repeats=repeats, device=device)["copy"]
    return {"bytes_per_s": moved / (t.median * 1e-3), "ms": t.median, "spread": t.spread}


def exp_rate_in_cache(device="cpu", *, repeats: int = 5) -> float:
    """Exponentials per second of ``torch.exp`` (fp32) on a cache-resident buffer (compute bound)."""
    fn, n = exp_cache_probe(device)
    t = time_fns({"exp": fn}, warmup=1, repeats=repeats, device=device)["exp"]
    return n / (t.median * 1e-3)


# ---- peak memory ------------------------------------------------------------------------------

def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
    if m is None:
        raise RuntimeError(f"/proc/self/status has no {key}")
    return int(m.group(1))


def _load_module(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem + "_peak_child", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _measure_here(make: Callable[..., Callable[[], object]], kwargs: dict, warm_kwargs: Optional[dict],
                  device: str) -> Dict[str, float]:
    """Peak extra memory of ``make(**kwargs)()`` in this process (inputs built by ``make`` excluded)."""
    if warm_kwargs is not None:
        make(**warm_kwargs)()
    run = make(**kwargs)
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return {"peak_extra_bytes": float(torch.cuda.max_memory_allocated() - base), "baseline_bytes": float(base),
                "method": "torch.cuda.max_memory_allocated"}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    base = _proc_status_kb("VmRSS")
    if _proc_status_kb("VmHWM") > base + 1024:
        raise RuntimeError("VmHWM reset did not take effect; cannot measure peak memory honestly")
    run()
    peak = _proc_status_kb("VmHWM")
    return {"peak_extra_bytes": float((peak - base) * 1024), "baseline_bytes": float(base * 1024),
            "method": "VmHWM-VmRSS (subprocess, MALLOC_MMAP_THRESHOLD_=65536)"}


def peak_memory(module_file: str, func: str, kwargs: dict, *, warm_kwargs: Optional[dict] = None,
                device="cpu", timeout: float = 1800) -> Dict[str, float]:
    """Peak extra memory of one call of ``module.func(**kwargs)()``.

    ``func`` builds the inputs and returns a zero-argument callable (the measured call); only
    memory allocated during that call counts. ``warm_kwargs`` (small shapes) is run first to
    initialize libraries (thread pools, BLAS buffers). CPU: measured in a fresh subprocess (see
    the module doc). CUDA: in this process with the caching allocator's statistics.
    """
    if torch.device(device).type == "cuda":
        return _measure_here(getattr(_load_module(module_file), func), kwargs, warm_kwargs, device)
    if not Path("/proc/self/clear_refs").exists():
        raise RuntimeError("peak memory on CPU needs Linux /proc/self/clear_refs")
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    payload = json.dumps({"module": str(module_file), "func": func, "kwargs": kwargs,
                          "warm_kwargs": warm_kwargs, "device": str(device)})
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--peak-child", payload],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"peak-memory subprocess failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    return json.loads(last)


def _peak_child(payload: str) -> None:
    p = json.loads(payload)
    mod = _load_module(p["module"])
    res = _measure_here(getattr(mod, p["func"]), p["kwargs"], p["warm_kwargs"], p["device"])
    print(json.dumps(res), flush=True)


def mem_available_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            m = re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


# ---- environment and output -------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def git_commit() -> str:
    """Short commit of the repository, with "+dirty" when tracked files differ from it."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def env_info(device="cpu") -> Dict[str, object]:
    d = {
        "commit": git_commit(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_avg_1m": round(load_average(), 2),
    }
    if torch.device(device).type == "cuda":
        d["gpu"] = torch.cuda.get_device_name()
    return d


def busy_note(threads: int) -> str:
    """A warning when other processes compete for the cores (timings then get noisy)."""
    la = load_average()
    if la == la and la > 0.5 * threads:
        return (f"note: 1-minute load average {la:.2f} on {os.cpu_count()} CPUs before this run "
                "(other processes are competing; ratios are more trustworthy than absolute times)")
    return ""


def fmt(v, digits: int = 3) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        if abs(v) >= 1000:
            return f"{v:.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def print_table(rows: Sequence[dict], columns: Sequence[str], title: str = "") -> None:
    if title:
        print(f"\n{title}")
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def write_csv(rows: Sequence[dict], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: List[str] = []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


# ---- charts -----------------------------------------------------------------------------------

def _bar_value(row: dict, key: str, log: bool) -> Optional[float]:
    """``row[key]`` as a float, or None where it cannot be drawn (missing, NaN, inf, <= 0 on a log axis)."""
    v = row.get(key)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v) or (log and v <= 0):
        return None
    return v


def grouped_bars(ax, rows: Sequence[dict], series: Sequence[Tuple[str, str]], labels: Sequence[str], *,
                 log: bool = True, legend: Optional[str] = "outside") -> None:
    """Draw one group of bars per row on ``ax``: bar ``i`` of a group is ``row[series[i][0]]``.

    ``series`` is ``[(row key, legend name), ...]``, ``labels`` one x tick label per row. A value
    that is missing, NaN or infinite (a variant that was skipped or failed), or not positive on
    a log axis, leaves its slot empty; a series with no value at all is left out of the legend.
    Each series keeps its colour (``C0``, ``C1``, ...) and slot whatever is missing.
    ``legend``: "outside" (right of the axis), a matplotlib ``loc`` string, or None for none.
    """
    width = 0.8 / max(len(series), 1)
    drawn = False
    for i, (key, name) in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width
        points = [(j + offset, v) for j, r in enumerate(rows) if (v := _bar_value(r, key, log)) is not None]
        if points:
            xs, heights = zip(*points)
            ax.bar(xs, heights, width, label=name, color=f"C{i % 10}")
            drawn = True
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=8 if len(rows) <= 6 else 7)
    if log and drawn:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3, which="both" if log else "major")
    ax.set_axisbelow(True)
    if legend and drawn:
        if legend == "outside":
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        else:
            ax.legend(fontsize=8, loc=legend)


def save_bar_chart(rows: Sequence[dict], path, series: Sequence[Tuple[str, str]], labels: Sequence[str], *,
                   title: str, ylabel: str, log: bool = True) -> Optional[Path]:
    """One grouped bar chart (:func:`grouped_bars`) saved as ``path`` with matplotlib's Agg backend.

    Returns the path written, or None (with a message) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width = min(16.0, max(7.0, 2.5 + len(rows) * (0.25 * len(series) + 0.4)))
    fig, ax = plt.subplots(figsize=(width, 4.5))
    grouped_bars(ax, rows, series, labels, log=log)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pass_miss(ok: bool) -> str:
    return "PASS" if ok else "MISS"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--peak-child":
        _peak_child(sys.argv[2])
    else:
        print(__doc__)
