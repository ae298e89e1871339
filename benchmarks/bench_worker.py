"""One benchmark configuration in its own process, driven over stdin/stdout.

Usage (by `train_benchmark.py`, not by hand):

    python benchmarks/bench_worker.py '<config as JSON>'

The worker builds its runner (see `bench_runners.py`), warms it up and
answers `{"ready": ...}`. Then it reads one JSON command per line and answers
each with one JSON line, prefixed with `@@ ` so that library logs on stdout
cannot be mistaken for answers:

- `{"cmd": "train", "steps": n}`: n timed training steps between two
  reference matmuls; answers the seconds of each step (wall clock, and CPU
  time of all the process' threads) and the mean seconds of the matmuls.
- `{"cmd": "infer", "order": [modes]}`: one reference matmul, then one
  timed forward pass of each inference mode, in the given order.
- `{"cmd": "memory", "steps": n}`: resets the allocator statistics, runs n
  training steps, answers the allocator peak and the process' peak RSS.
- `{"cmd": "quit"}`: answers the peak RSS and exits.

Running every configuration in a fresh process keeps their memory figures
apart, and lets the peers run in their own interpreter.
"""

import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _answer(payload):
    sys.stdout.write("@@ " + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _max_rss_bytes():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _timed(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _timed_cpu(call):
    """Wall seconds and CPU seconds (all threads of this process) of a call."""
    cpu = time.process_time()
    wall = _timed(call)
    return wall, time.process_time() - cpu


def _versions():
    versions = {}
    for module in ("tensorflow", "keras", "torch", "monai", "keras_unetpp"):
        if module in sys.modules:
            version = getattr(sys.modules[module], "__version__", None)
            if version:
                versions[f"{module}_version"] = str(version)
    return versions


def serve(config):
    """Builds the configuration's runner and answers commands until `quit`."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_runners
    import cpu_info

    rss_before = _max_rss_bytes()
    try:
        runner = bench_runners.make_runner(config)
    except ImportError as error:
        _answer({"ready": False, "error": f"{type(error).__name__}: {error}"})
        return
    except ValueError as error:
        # keras_unetpp's InputError: this configuration cannot run here
        # (e.g. bfloat16 where oneDNN is capped below AVX512_CORE).
        if type(error).__name__ != "InputError":
            raise
        _answer({"ready": False, "error": str(error)})
        return
    rss_built = _max_rss_bytes()
    for _ in range(config.get("warmup", 2)):
        runner.train_step()
    for call, _ in runner.infer_modes.values():
        call()
    runner.reference()
    _answer(
        {
            "ready": True,
            "params": int(runner.params),
            "flops": int(runner.flops),
            "infer_flops": {m: int(f) for m, (_, f) in runner.infer_modes.items()},
            "ref_flops": int(runner.reference()),
            "rss_import_bytes": rss_before,
            "rss_built_bytes": rss_built,
            "versions": _versions(),
            "peaks": runner.peaks() if hasattr(runner, "peaks") else {},
            "cpu": cpu_info.describe_cpu(),
        }
    )
    for line in sys.stdin:
        command = json.loads(line)
        cmd = command["cmd"]
        if cmd == "train":
            before = _timed(runner.reference)
            steps = [_timed_cpu(runner.train_step) for _ in range(command["steps"])]
            after = _timed(runner.reference)
            _answer(
                {
                    "ref_s": (before + after) / 2,
                    "step_s": [wall for wall, _ in steps],
                    "step_cpu_s": [cpu for _, cpu in steps],
                }
            )
        elif cmd == "infer":
            ref = _timed(runner.reference)
            times = {m: _timed(runner.infer_modes[m][0]) for m in command["order"]}
            _answer({"ref_s": ref, "step_s": times})
        elif cmd == "memory":
            runner.reset_memory()
            steps = [_timed(runner.train_step) for _ in range(command["steps"])]
            _answer(
                {
                    "step_s": steps,
                    "allocator_peak_bytes": runner.memory_peak(),
                    "max_rss_bytes": _max_rss_bytes(),
                }
            )
        elif cmd == "quit":
            _answer({"max_rss_bytes": _max_rss_bytes()})
            return
        else:
            _answer({"error": f"unknown command {cmd!r}"})


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
