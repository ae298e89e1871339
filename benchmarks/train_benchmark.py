"""Training and inference speed and memory of keras_unetpp, against peers.

Measures, in one run on one machine:

- training (one optimizer step on a fixed batch) and inference (one forward
  pass in inference mode) in images/s, the achieved GFLOP/s (a training step
  counts 3x the forward FLOPs) and the percentage of the machine's peak, read
  off a large float32 matmul timed in the same process and round;
- keras_unetpp at each depth, without and with deep supervision (DS), in
  float32 and mixed_bfloat16; for DS models the inference modes "accurate"
  (the average of all heads) and the pruned heads L1..L<depth>;
- the peers, with the same widths (32, 64, ..., 512), input, batch and
  precision: keras-unet-collection's `unet_plus_2d` (Keras 3) and MONAI's
  `BasicUNetPlusPlus` (PyTorch), depth 4;
- the peak memory of a training step (TensorFlow's allocator peak and the
  process' peak RSS), each configuration alone in a fresh process.

Each configuration runs in its own worker process (`bench_worker.py`). The
configurations of a group (same depth) stay alive side by side and take
turns step by step, in alternating order (A B C, C B A, ...), so that load
from other programs on the machine hits them alike; ratios between them are
medians of per-round ratios. Figures are medians over `--steps` steps after
`--warmup` warm-up steps.

The peers need packages that keras_unetpp does not: install them in their
own environment and point `--peer-python` at its interpreter, e.g.

    python3 -m venv ../venv-peers
    ../venv-peers/bin/pip install tensorflow keras-unet-collection pillow \
        torch monai
    python benchmarks/train_benchmark.py --peer-python ../venv-peers/bin/python

Usage:

    python benchmarks/train_benchmark.py            # full run, ~10 minutes
    python benchmarks/train_benchmark.py --quick    # smoke test, tiny model
"""

import argparse
import itertools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys

import cpu_info

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "bench_worker.py"
PRECISIONS = ("float32", "mixed_bfloat16")
PEERS = ("kuc", "monai")
# Variants of the depth-4 float32 model, each timed beside the plain one.
LEVERS = {
    "xla": {"xla": True},
    "interop1": {"env": {"TF_NUM_INTEROP_THREADS": "1"}},
    # The two that helped training on oneDNN's AVX2 kernels, together.
    "xla_interop1": {"xla": True, "env": {"TF_NUM_INTEROP_THREADS": "1"}},
    "no_onednn": {"env": {"TF_ENABLE_ONEDNN_OPTS": "0"}},
    "onednn": {"env": {"TF_ENABLE_ONEDNN_OPTS": "1"}},
    # oneDNN's AVX2 kernels on an AVX-512 machine: most of an AVX2 CPU.
    "avx2_isa": {"env": {"ONEDNN_MAX_CPU_ISA": "AVX2"}},
    # jemalloc instead of glibc's malloc (Debian: apt-get install libjemalloc2).
    "jemalloc": {"env": {"LD_PRELOAD": "libjemalloc.so.2"}},
    # TensorFlow's best-fit-with-coalescing pool for CPU tensors.
    "bfc": {"env": {"TF_CPU_ALLOCATOR_USE_BFC": "true"}},
    # The paper's configuration: no normalization, convolutions with biases.
    "no_norm": {"build_kwargs": {"normalization": "none"}},
    # Keras' own batch normalization (moments, then scale and shift, as
    # separate ops; float32 casts under mixed precision) instead of
    # TensorFlow's fused kernel (`keras_unetpp.fuse_batch_norm`).
    "keras_bn": {"batch_norm": "keras"},
    # Recompute each node's activations in the backward pass
    # (`keras_unetpp.recompute_nodes`): less memory, more compute.
    "recompute": {"recompute": True},
    # More work per step: compare their % of peak, not their step times.
    "batch16": {"batch": 16},
    "size256": {"size": 256},
}
# Levers whose training-step memory is measured too (beside the plain model).
MEMORY_LEVERS = ("keras_bn", "recompute")
PEER_NAMES = {
    "keras_unetpp": "keras_unetpp",
    "kuc": "keras-unet-collection",
    "monai": "MONAI BasicUNet++",
}


def _config(impl, depth, ds, precision, args, **extra):
    config = {
        "impl": impl,
        "depth": depth,
        "deep_supervision": ds,
        "precision": precision,
        "size": args.size,
        "spatial_dims": args.spatial_dims,
        "batch": args.batch,
        "warmup": args.warmup,
        "ref_size": args.ref_size,
    }
    config.update(extra)
    if "lever" in extra:
        suffix = f"-{extra['lever']}"
    else:
        suffix = "".join(f"-{k}={v}" for k, v in sorted(extra.items()))
    dims = "-3d" if args.spatial_dims == 3 else ""
    mode = "ds" if ds else "nods"
    config["name"] = f"{impl}{dims}-d{depth}-{mode}-{precision}{suffix}"
    return config


def _peer_configs(depth, modes, args):
    configs = []
    for peer in args.peers:
        for ds in modes:
            # MONAI's deep supervision has no inference counterpart to time.
            if peer == "kuc" or not ds:
                configs.append((peer, ds))
    return configs


def plan(args):
    """The groups of speed configurations and the memory configurations.

    Per depth, keras_unetpp without and with deep supervision in each
    precision side by side; at depth 4, the peers side by side with
    keras_unetpp in float32.
    """
    groups = []
    if args.only in (None, "speed"):
        for depth in args.depths:
            # Below the deepest depth, deep supervision adds little that the
            # pruned heads of the deepest model do not show: skipped unless
            # it is the only mode asked for.
            modes = args.modes
            if depth != max(args.depths) and len(modes) > 1:
                modes = [ds for ds in modes if not ds]
            group = [
                _config("keras_unetpp", depth, ds, p, args)
                for ds, p in itertools.product(modes, args.precisions)
            ]
            if group:
                groups.append(group)
            peers = _peer_configs(depth, args.modes, args) if depth == 4 else []
            if peers:
                groups.append(
                    [
                        _config("keras_unetpp", depth, ds, "float32", args)
                        for ds in args.modes
                    ]
                    + [_config(peer, depth, ds, "float32", args) for peer, ds in peers]
                )
        if args.levers:
            # The plain model and each variant side by side, in the same
            # rounds; one group per precision of --lever-precisions.
            depth = max(args.depths)
            for precision in args.lever_precisions:
                groups.append(
                    [_config("keras_unetpp", depth, False, precision, args)]
                    + [
                        _config(
                            "keras_unetpp",
                            depth,
                            False,
                            precision,
                            args,
                            lever=lever,
                            **LEVERS[lever],
                        )
                        for lever in args.levers
                    ]
                )
    memory = []
    if args.memory_size and args.only in (None, "memory"):
        depth = max(args.depths)
        mem = dict(
            vars(args), size=args.memory_size, batch=args.memory_batch, ref_size=0
        )
        mem = argparse.Namespace(**mem)
        # --quick measures the memory of the first precision only.
        precisions = args.precisions[:1] if args.quick else args.precisions
        for ds, precision in itertools.product(args.modes, precisions):
            if ds and precision != "float32":
                continue  # as much saved as without deep supervision
            memory.append(
                _config("keras_unetpp", depth, ds, precision, mem, infer=False)
            )
        for lever in args.levers:
            if lever in MEMORY_LEVERS:
                memory.append(
                    _config(
                        "keras_unetpp",
                        depth,
                        False,
                        "float32",
                        mem,
                        infer=False,
                        lever=lever,
                        **LEVERS[lever],
                    )
                )
        if depth == 4:
            for peer, ds in _peer_configs(depth, args.modes, args):
                if not ds:
                    memory.append(_config(peer, depth, ds, "float32", mem, infer=False))
    return groups, memory


class Worker:
    """A running `bench_worker.py` process of one configuration."""

    def __init__(self, config, python):
        self.config = config
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **config.get("env", {}))
        # An AVX2 reproduction caps XLA's code generation too.
        cpu_info.cap_xla_like_onednn(env)
        self.process = subprocess.Popen(
            [python, str(WORKER), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.info = None

    def wait_ready(self):
        if self.info is None:
            self.info = self._read()
        return self.info

    def _read(self):
        for line in self.process.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
        error = self.process.stderr.read().strip().splitlines()
        tail = error[-1] if error else f"exit code {self.process.wait()}"
        return {"ready": False, "error": tail}

    def ask(self, **command):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self):
        self.wait_ready()
        answer = {}
        if self.process.poll() is None:
            answer = self.ask(cmd="quit")
        self.process.stdin.close()
        self.process.wait()
        self.process.stdout.close()
        self.process.stderr.close()
        return answer


def _python_for(config, args):
    return args.python if config["impl"] == "keras_unetpp" else args.peer_python


def _median(values):
    return statistics.median(values)


def run_group(group, args, log):
    """Times a group's configurations in turns; returns one result each."""
    log("  starting " + ", ".join(c["name"] for c in group))
    # Start side by side (the imports overlap), then wait for each to be ready.
    workers = [Worker(config, _python_for(config, args)) for config in group]
    for worker in workers:
        worker.wait_ready()
    alive = [w for w in workers if w.info.get("ready")]
    train = {id(w): {"step_s": [], "step_cpu_s": [], "ref_s": []} for w in alive}
    infer = {id(w): {"step_s": {}, "ref_s": []} for w in alive}
    for step in range(args.steps):
        order = alive if step % 2 == 0 else alive[::-1]
        for worker in order:
            answer = worker.ask(cmd="train", steps=1)
            train[id(worker)]["step_s"].extend(answer["step_s"])
            train[id(worker)]["step_cpu_s"].extend(answer["step_cpu_s"])
            train[id(worker)]["ref_s"].append(answer["ref_s"])
    for step in range(args.steps):
        order = alive if step % 2 == 0 else alive[::-1]
        for worker in order:
            modes = list(worker.info["infer_flops"])
            if step % 2:
                modes.reverse()
            answer = worker.ask(cmd="infer", order=modes)
            record = infer[id(worker)]
            record["ref_s"].append(answer["ref_s"])
            for mode, seconds in answer["step_s"].items():
                record["step_s"].setdefault(mode, []).append(seconds)
    # The peak is TensorFlow's float32 matmul for every configuration: a
    # PyTorch worker is compared with the matmul of the group's first
    # TensorFlow worker in the same rounds (PyTorch's own CPU matmul may be
    # slower, which would flatter its percentages).
    tf_workers = [w for w in alive if w.config["impl"] != "monai"]
    for worker in alive:
        if worker.config["impl"] == "monai" and tf_workers:
            reference = tf_workers[0]
            train[id(worker)]["ref_s"] = train[id(reference)]["ref_s"]
            infer[id(worker)]["ref_s"] = infer[id(reference)]["ref_s"]
            worker.info["ref_flops"] = reference.info["ref_flops"]
    results = []
    for worker in workers:
        closing = worker.close()
        result = {"config": worker.config, "info": worker.info}
        if worker.info.get("ready"):
            result["train"] = train[id(worker)]
            result["infer"] = infer[id(worker)]
            result["max_rss_bytes"] = closing.get("max_rss_bytes")
        results.append(result)
    return results


def run_memory(config, args, log):
    log(f"  memory of {config['name']}")
    worker = Worker(config, _python_for(config, args))
    result = {"config": config, "info": worker.wait_ready()}
    if worker.info.get("ready"):
        result["memory"] = worker.ask(cmd="memory", steps=args.memory_steps)
    worker.close()
    return result


# --- turning timings into records -------------------------------------------


def _label(config):
    label = PEER_NAMES[config["impl"]]
    if "lever" in config:
        label += f" +{config['lever']}"
    return label


def _base_record(config):
    return {
        "model": _label(config),
        "impl": config["impl"],
        "depth": config["depth"],
        "deep_supervision": config["deep_supervision"],
        "precision": config["precision"],
        "size": config["size"],
        "spatial_dims": config.get("spatial_dims", 2),
        "batch": config["batch"],
        "xla": bool(config.get("xla", False)),
        "env": config.get("env", {}),
        "lever": config.get("lever"),
    }


def _speed_record(config, info, phase, mode, steps, refs, flops):
    """Images/s, GFLOP/s and % of the same-round matmul peak of one timing."""
    batch = config["batch"]
    work = flops * batch * (3 if phase == "train" else 1)
    ref_flops = info["ref_flops"]
    # Per-round ratio of achieved to peak GFLOP/s, then the median.
    pct = [100.0 * (work / s) / (ref_flops / r) for s, r in zip(steps, refs)]
    median_s = _median(steps)
    record = _base_record(config)
    record.update(
        record="speed",
        phase=phase,
        mode=mode,
        params=info["params"],
        gflop_per_image=flops / 1e9,
        steps=len(steps),
        step_s=median_s,
        images_per_s=batch / median_s,
        gflops=work / median_s / 1e9,
        peak_gflops=ref_flops / _median(refs) / 1e9,
        pct_of_peak=_median(pct),
        onednn=info.get("cpu", {}).get("onednn"),
        cpu_kind=info.get("cpu", {}).get("kind"),
    )
    return record


def speed_records(results):
    records = []
    for result in results:
        config, info = result["config"], result["info"]
        if not info.get("ready"):
            record = _base_record(config)
            record.update(record="speed", phase="skipped", error=info.get("error"))
            records.append(record)
            continue
        train = result["train"]
        record = _speed_record(
            config,
            info,
            "train",
            "train",
            train["step_s"],
            train["ref_s"],
            info["flops"],
        )
        # CPU seconds of all threads per step: a figure that load from other
        # programs changes less than the wall clock.
        record["cpu_s_per_step"] = _median(train["step_cpu_s"])
        records.append(record)
        infer = result["infer"]
        for mode, steps in infer["step_s"].items():
            records.append(
                _speed_record(
                    config,
                    info,
                    "infer",
                    mode,
                    steps,
                    infer["ref_s"],
                    info["infer_flops"][mode],
                )
            )
    return records


def memory_records(results):
    records = []
    for result in results:
        config, info = result["config"], result["info"]
        record = _base_record(config)
        record["record"] = "memory"
        if not info.get("ready"):
            record["error"] = info.get("error")
        else:
            memory = result["memory"]
            allocator = memory["allocator_peak_bytes"]
            record.update(
                params=info["params"],
                step_s=_median(memory["step_s"]),
                allocator_peak_mb=allocator / 2**20 if allocator else None,
                max_rss_mb=memory["max_rss_bytes"] / 2**20,
                rss_growth_mb=(memory["max_rss_bytes"] - info["rss_built_bytes"])
                / 2**20,
            )
        records.append(record)
    return records


def _is_lever(config):
    return "lever" in config


def _paired(a, b):
    """Median over rounds of a[i] / b[i]."""
    return _median([x / y for x, y in zip(a, b)])


def ratio_records(groups_results):
    """Paired ratios between configurations that ran side by side."""
    records = []

    def add(name, value, target=None, note=""):
        records.append(
            {
                "record": "ratio",
                "ratio": name,
                "value": value,
                "target": target,
                "note": note,
            }
        )

    for results in groups_results:
        ready = [r for r in results if r["info"].get("ready")]
        by_name = {r["config"]["name"]: r for r in ready}
        for result in ready:
            config = result["config"]
            if config["impl"] != "keras_unetpp" or _is_lever(config):
                continue
            depth, ds = config["depth"], config["deep_supervision"]
            tag = f"d{depth} {'DS' if ds else 'no DS'}"
            steps = result["train"]["step_s"]
            if config["precision"] != "float32":
                base = by_name.get(
                    f"keras_unetpp-d{depth}-{'ds' if ds else 'nods'}-float32"
                )
                if base:
                    add(
                        f"training speed-up {config['precision']} / float32, {tag}",
                        _paired(base["train"]["step_s"], steps),
                        ">= 2" if depth == 4 else None,
                    )
                    for mode, infer_steps in result["infer"]["step_s"].items():
                        if mode in ("accurate", f"L{depth}"):
                            add(
                                f"inference speed-up {config['precision']} / "
                                f"float32, {tag}, {mode}",
                                _paired(base["infer"]["step_s"][mode], infer_steps),
                            )
            if ds:
                base = by_name.get(f"keras_unetpp-d{depth}-nods-{config['precision']}")
                if base:
                    add(
                        f"training time DS / no DS, d{depth}, {config['precision']}",
                        _paired(steps, base["train"]["step_s"]),
                        note="cost of the extra heads and their losses",
                    )
                infer = result["infer"]["step_s"]
                add(
                    f"accurate / L{depth} inference time, {tag}, {config['precision']}",
                    _paired(infer["accurate"], infer[f"L{depth}"]),
                    "<= 1.05",
                )
            for other in ready:
                oc = other["config"]
                if (
                    oc["impl"] == "keras_unetpp"
                    or oc["precision"] != config["precision"]
                    or oc["deep_supervision"] != ds
                ):
                    continue
                add(
                    f"training speed keras_unetpp / {_label(oc)}, {tag}, "
                    f"{config['precision']}",
                    _paired(other["train"]["step_s"], steps),
                    note="images/s ratio, same rounds",
                )
        for result in ready:
            config = result["config"]
            if _is_lever(config) and not _is_lever(ready[0]["config"]):
                base = ready[0]
                if config["lever"] in ("batch16", "size256"):
                    continue  # different work per step: see their % of peak
                add(
                    f"lever speed-up ({_label(config)}) / plain, "
                    f"d{config['depth']} {config['precision']}, training",
                    _paired(base["train"]["step_s"], result["train"]["step_s"]),
                )
                mode = f"L{config['depth']}"
                add(
                    f"lever speed-up ({_label(config)}) / plain, "
                    f"d{config['depth']} {config['precision']}, inference",
                    _paired(
                        base["infer"]["step_s"][mode], result["infer"]["step_s"][mode]
                    ),
                )
    return records


# --- printing ---------------------------------------------------------------


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _table(headers, rows):
    widths = [
        max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h)
        for i, h in enumerate(headers)
    ]
    lines = [
        "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in rows:
        lines.append(
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"
        )
    return "\n".join(lines)


def speed_table(records):
    headers = [
        "model",
        "depth",
        "DS",
        "precision",
        "phase",
        "mode",
        "GFLOP/img",
        "img/s",
        "GFLOP/s",
        "% peak",
        "peak GFLOP/s",
        "oneDNN",
        "kernels",
    ]
    rows = []
    for r in records:
        if r["phase"] == "skipped":
            rows.append(
                [
                    r["model"],
                    r["depth"],
                    "yes" if r["deep_supervision"] else "no",
                    r["precision"],
                    "skipped",
                    r.get("error", "")[:40],
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        rows.append(
            [
                r["model"],
                r["depth"],
                "yes" if r["deep_supervision"] else "no",
                r["precision"],
                r["phase"],
                r["mode"],
                _fmt(r["gflop_per_image"], ".2f"),
                _fmt(r["images_per_s"], ".2f"),
                _fmt(r["gflops"], ".0f"),
                _fmt(r["pct_of_peak"], ".0f"),
                _fmt(r["peak_gflops"], ".0f"),
                {True: "on", False: "off"}.get(r.get("onednn"), "?"),
                r.get("cpu_kind") or "?",
            ]
        )
    return _table(headers, rows)


def skipped_reasons(records):
    """One line per skipped configuration with its whole reason."""
    return [
        f"skipped: {r['model']} {r['precision']}: {r.get('error') or 'no reason given'}"
        for r in records
        if r["phase"] == "skipped"
    ]


def memory_table(records):
    headers = [
        "model",
        "depth",
        "DS",
        "precision",
        "image",
        "batch",
        "TF allocator peak MB",
        "peak RSS MB",
        "RSS growth MB",
        "step s",
    ]
    rows = [
        [
            r["model"],
            r["depth"],
            "yes" if r["deep_supervision"] else "no",
            r["precision"],
            "x".join([str(r["size"])] * r.get("spatial_dims", 2)),
            r["batch"],
            _fmt(r.get("allocator_peak_mb"), ".0f"),
            _fmt(r.get("max_rss_mb"), ".0f"),
            _fmt(r.get("rss_growth_mb"), ".0f"),
            _fmt(r.get("step_s"), ".2f"),
        ]
        for r in records
    ]
    return _table(headers, rows)


def ratio_table(records):
    rows = [[r["ratio"], _fmt(r["value"], ".3f"), r["target"] or ""] for r in records]
    return _table(["ratio (paired, same rounds)", "value", "target"], rows)


def machine_record(results):
    """What the run ran on: CPU, cores, library versions."""
    record = {"record": "machine", "platform": platform.platform()}
    try:
        lscpu = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        lscpu = ""
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "L3 cache"):
            record[key.strip()] = value.strip()
        if key.strip() == "Flags":
            flags = value.split()
            record["simd"] = " ".join(
                f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
            )
    record["cpu_count"] = os.cpu_count()
    peaks = {}
    for result in results:
        if "cpu" in result["info"] and "cpu" not in record:
            record["cpu"] = result["info"]["cpu"]
        record.update(result["info"].get("versions", {}))
        for key, value in result["info"].get("peaks", {}).items():
            peaks.setdefault(key, []).append(value)
    # The best of each worker's start-up measurement, median over workers.
    record.update({key: _median(values) for key, values in peaks.items()})
    return record


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: a tiny depth-2 model, a few steps",
    )
    parser.add_argument(
        "--size", type=int, default=128, help="square image size of the speed runs"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--spatial-dims",
        type=int,
        choices=(2, 3),
        default=2,
        help="2: size x size images; 3: size^3 volumes (3x3x3 convolutions; "
        "the peer is MONAI's BasicUNetPlusPlus with spatial_dims=3)",
    )
    parser.add_argument(
        "--steps", type=int, default=20, help="timed steps per configuration (median)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--depths",
        type=int,
        nargs="+",
        help="depths of keras_unetpp (default 4 3 2 1; 2 with --quick)",
    )
    parser.add_argument(
        "--modes",
        nargs="*",
        default=["nods", "ds"],
        choices=["nods", "ds"],
        help="without and/or with deep supervision",
    )
    parser.add_argument(
        "--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS
    )
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    parser.add_argument(
        "--peer-python",
        default=os.environ.get("KERAS_UNETPP_PEER_PYTHON", sys.executable),
        help="interpreter that has the peers installed",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that has keras_unetpp installed",
    )
    parser.add_argument(
        "--only",
        choices=["speed", "memory"],
        help="run only the speed or only the memory part",
    )
    parser.add_argument(
        "--levers",
        nargs="*",
        default=[],
        choices=sorted(LEVERS),
        help="also time these variants beside the plain "
        "model: XLA, one inter-op thread, no oneDNN, "
        "jemalloc, TensorFlow's BFC allocator, no normalization, "
        "Keras' unfused batch norm, batch 16, 256x256 images",
    )
    parser.add_argument(
        "--lever-precisions",
        nargs="+",
        default=["float32"],
        choices=PRECISIONS,
        help="the precisions in which the levers are timed (one group each)",
    )
    parser.add_argument(
        "--memory-size",
        type=int,
        default=256,
        help="image size of the memory runs (0: none)",
    )
    parser.add_argument("--memory-batch", type=int, default=8)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument(
        "--ref-size",
        type=int,
        default=3072,
        help="n of the n x n float32 reference matmul",
    )
    parser.add_argument(
        "--json", type=pathlib.Path, help="also write the JSON lines to this file"
    )
    return parser


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    args.modes = [mode == "ds" for mode in dict.fromkeys(args.modes)]
    if args.quick:
        args.size, args.batch, args.steps, args.warmup = 32, 2, 3, 1
        args.peers, args.ref_size = [], 512
        args.memory_size, args.memory_batch, args.memory_steps = 32, 2, 1
    if args.depths is None:
        args.depths = [2] if args.quick else [4, 3, 2, 1]
    if args.spatial_dims == 3:
        # keras-unet-collection builds 2D networks only.
        args.peers = [peer for peer in args.peers if peer != "kuc"]
    return args


def main(argv=None):
    args = parse_args(argv)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    groups, memory = plan(args)
    group_results = []
    for group in groups:
        log(f"group: {', '.join(c['name'] for c in group)}")
        group_results.append(run_group(group, args, log))
    memory_results = [run_memory(c, args, log) for c in memory]
    flat = [r for results in group_results for r in results]
    records = [machine_record(flat + memory_results)]
    speed = speed_records(flat)
    mem = memory_records(memory_results)
    ratios = ratio_records(group_results)
    records += speed + mem + ratios
    machine = records[0]
    print(
        f"Machine: {machine.get('Model name', platform.processor())}, "
        f"{machine.get('CPU(s)', os.cpu_count())} CPUs ({machine.get('simd', '')}); "
        + ", ".join(f"{k} {v}" for k, v in machine.items() if k.endswith("version"))
    )
    if "cpu" in machine:
        print(cpu_info.summary(machine["cpu"]) + " (the plain configurations)")
    if "float32_matmul_gflops" in machine:
        bf16 = machine.get("bfloat16_matmul_gflops")
        bf16 = "not timed (oneDNN capped below bf16)" if bf16 is None else f"{bf16:.0f}"
        print(
            f"Matmul peaks ({args.ref_size}^2): float32 "
            f"{machine['float32_matmul_gflops']:.0f} GFLOP/s, bfloat16 {bf16} GFLOP/s"
        )
    shape = "x".join([str(args.size)] * args.spatial_dims)
    memory_shape = "x".join([str(args.memory_size)] * args.spatial_dims)
    kind = "volumes" if args.spatial_dims == 3 else "images"
    if speed:
        print(
            f"\nSpeed: {shape}x1 {kind}, batch {args.batch}, "
            f"medians of {args.steps} steps after {args.warmup} warm-up; a "
            "training step counts 3x the forward FLOPs; % peak = achieved / "
            f"float32 {args.ref_size}^2 matmul in the same process and round.\n"
        )
        print(speed_table(speed))
        for line in skipped_reasons(speed):
            print(line)
    if mem:
        print(
            f"\nMemory: one training step, {memory_shape}"
            f"x1 {kind}, batch {args.memory_batch}, each configuration alone in a "
            "fresh process.\n"
        )
        print(memory_table(mem))
    if ratios:
        print()
        print(ratio_table(ratios))
    print()
    lines = [json.dumps(r, sort_keys=True) for r in records]
    print("\n".join(lines))
    if args.json:
        args.json.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
