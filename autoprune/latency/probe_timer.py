# ruff: noqa: B905  (runs on Python < 3.10 too: no zip(strict=...))
"""Time the probe models of a LUT build with ONNX Runtime or OpenVINO and write timings.json.

Standalone: needs only Python 3.8+, numpy and the runtime's package (``onnxruntime``, or
``openvino`` with ``--runtime openvino``; no autoprune, no torch), so it runs on the target
device. ``autoprune lut probes`` copies it next to the probes as ``time_probes.py``::

    python time_probes.py [DIR] [--runtime onnxruntime|openvino] [--threads 1] [--rounds 5]
                          [--samples 3] [--clock auto|wall|cpu] [--device-name NAME]

``--clock auto`` (default) times with the timing thread's CPU time at 1 thread (a busy device
cannot inflate it) and with the wall clock otherwise; ``wall`` gives end-to-end latency.

Every layer probe is timed interleaved with the reference probe, the unpruned model with the
reference probe, and every calibration plan with the unpruned model: in each pass the reference is
timed before the first probe, after every few probes and at the end; a probe's ratio in a pass is
its fastest sample (after one untimed sample) over the geometric mean of the reference timings beside
it; the ratio kept is the median over
passes, the ms the fastest pass. ``autoprune lut import DIR --out LUT.json`` turns timings.json
into a LUT.
"""

import argparse
import json
import os
import platform
import time

import numpy as np


def runtime_version(runtime):
    if runtime == "openvino":
        import openvino

        return str(openvino.__version__).split("-")[0]
    import onnxruntime

    return onnxruntime.__version__


def session(path, threads, runtime="onnxruntime"):
    """A zero-argument callable running the ONNX file at ``path`` on a fixed random input."""
    if runtime == "openvino":
        return openvino_session(path, threads)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([int(d) for d in inp.shape]).astype(np.float32)
    feed = {inp.name: x}
    return lambda: sess.run(None, feed)


_OV_CORE = None


def openvino_session(path, threads):
    """OpenVINO's CPU plugin: ``threads`` threads, one stream, latency hint, float32 (as autoprune's
    ``openvino`` runtime compiles it)."""
    import openvino as ov

    global _OV_CORE  # one core for the whole run: it must outlive every model compiled with it
    core = _OV_CORE = _OV_CORE or ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()
    shape = [int(d) for d in compiled.input(0).get_shape()]
    request.set_input_tensor(ov.Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32)))
    return request.infer


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock_now = time.perf_counter  # set by main() from --clock


def sample(fn, runs):
    start = clock_now()
    for _ in range(runs):
        fn()
    return (clock_now() - start) / runs * 1e3


def runs_for(fn, min_sample_ms):
    for _ in range(2):
        fn()
    return int(min(1000, max(1, np.ceil(min_sample_ms / max(sample(fn, 1), 1e-4)))))


def interleaved(reference, candidates, rounds, samples, ref_every, min_sample_ms):
    """[(ms, ratio to the reference)] per candidate, and the reference's ms."""
    fns = [reference] + list(candidates)
    runs = [runs_for(f, min_sample_ms) for f in fns]
    n = len(candidates)
    ms, rel, ref_ms = np.full((rounds, n), np.inf), np.ones((rounds, n)), []

    def timed(k):  # the fastest of ``samples`` after an untimed one
        sample(fns[k + 1], runs[k + 1])
        return min(sample(fns[k + 1], runs[k + 1]) for _ in range(samples))

    for r in range(rounds):
        order = list(range(n)) if r % 2 == 0 else list(reversed(range(n)))
        before = timed(-1)
        ref_ms.append(before)
        for start in range(0, n, ref_every):
            block = [(k, timed(k)) for k in order[start:start + ref_every]]
            after = timed(-1)
            ref_ms.append(after)
            for k, t in block:
                ms[r, k], rel[r, k] = t, t / max(np.sqrt(before * after), 1e-12)  # min() would be biased up
            before = after
    return list(zip(ms.min(axis=0).tolist(), np.median(rel, axis=0).tolist())), float(min(ref_ms))


def device_name():
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--block", type=int, default=16, help="probes whose sessions are open at once")
    parser.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                        help="auto: cpu at 1 thread, else wall; cpu: the timing thread's CPU time (1 thread)")
    parser.add_argument("--device-name", default=None)
    parser.add_argument("--out", default=None, help="default: DIR/timings.json")
    args = parser.parse_args()
    clock = args.clock if args.clock != "auto" else ("cpu" if args.threads == 1 else "wall")
    if clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu times one thread; use --threads 1 or --clock wall")
    global clock_now
    clock_now = CLOCKS[clock]
    with open(os.path.join(args.dir, "manifest.json")) as f:
        manifest = json.load(f)

    def path(name):
        return os.path.join(args.dir, name)

    def session_of(name):
        return session(path(name), args.threads, args.runtime)

    start = time.perf_counter()
    ref = session_of(manifest["reference"]["file"])
    probes, ref_times = {}, []
    files = [p["file"] for p in manifest["probes"]]
    for i in range(0, len(files), args.block):
        chunk = files[i:i + args.block]
        got, ref_now = interleaved(ref, [session_of(f) for f in chunk], args.rounds, args.samples,
                                   4, 0.5)
        probes.update(zip(chunk, got))
        ref_times.append(ref_now)
        print(f"probes: {min(i + args.block, len(files))}/{len(files)}", flush=True)
    base = session_of(manifest["base"]["file"])
    (base_timing,), _ = interleaved(ref, [base], args.rounds, max(args.samples, 6), 1, 1.0)
    plans = [p["file"] for p in manifest["calibration"]]
    got, base_ms = interleaved(base, [session_of(f) for f in plans], args.rounds,
                               max(args.samples, 6), 2, 1.0) if plans else ([], base_timing[0])
    out = {"schema": "autoprune.lut-timings/v1", "runtime": args.runtime, "runtime_version": runtime_version(args.runtime),
           "device": args.device_name or device_name(), "built_on": device_name(), "device_kind": "cpu",
           "threads": args.threads,
           "clock": clock, "reference_ms": float(np.median(ref_times)) if ref_times else None,
           "probes": {f: list(t) for f, t in probes.items()},
           "base": {"ms": base_ms, "reference": base_timing[1]},
           "calibration": {f: list(t) for f, t in zip(plans, got)},
           "seconds": round(time.perf_counter() - start, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    target = args.out or path("timings.json")
    tmp = target + ".tmp"  # written whole, then renamed: an interrupted run leaves no half-written timings
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, target)
    print(f"wrote {target} ({len(probes)} probes, {len(plans)} calibration plans, {out['seconds']:.1f} s)")


if __name__ == "__main__":
    main()
