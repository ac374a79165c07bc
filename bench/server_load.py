"""Loopback load test of the prediction server: requests/second and latency percentiles.

Starts ``runtimes.server`` on 127.0.0.1 (a free port) around a real model — the export folder given
as an argument, or else a tiny ONNX classifier built here — then sends a bounded load: N requests
in all from C client threads, each on its own kept-alive connection, posting JPEG photos as
``application/octet-stream`` to ``/image``. It stops by itself after N requests or the time limit,
whichever comes first, and prints requests/second, latency median/p90/p99 and the error count,
next to the bare ``predictor.predict`` latency on the same images (the server's own overhead).

    .venv/bin/python bench/server_load.py                          # tiny model, 500 requests x 4 clients
    .venv/bin/python bench/server_load.py exports/flowers-onnx -n 2000 -c 8 --threads 2
    .venv/bin/python bench/server_load.py --json

Traffic goes to 127.0.0.1 only. Timings depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import runtimes  # noqa: E402
from runtimes.server import make_server  # noqa: E402


def write_tiny_export(folder: Path) -> Path:
    """A 3-tag ONNX classifier export (input ``data`` [1,3,32,32], mean colour -> linear -> softmax)."""
    import onnx
    from onnx import TensorProto, helper

    labels = ["red", "green", "blue"]
    weights = (np.eye(3, dtype=np.float32) * 0.04 - 0.01).flatten().tolist()
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["data"], ["mean"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["mean", "weights"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["model_output"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("model_output", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor("weights", TensorProto.FLOAT, [3, 3], weights)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    manifest = {
        "schema_version": 1, "task": "multiclass", "domain": "general-compact", "project": "bench", "iteration": "1",
        "labels": labels, "model_file": "model.onnx", "labels_file": "labels.txt",
        "input": {"name": "data", "layout": "NCHW", "shape": [1, 3, 32, 32], "dtype": "float32",
                  "color": "RGB", "range": [0, 255], "resize": "bilinear"},
        "outputs": [{"name": "model_output", "shape": [1, 3], "dtype": "float32"}],
        "files": {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in ("model.onnx", "labels.txt")},
        "exporter": {"name": "onnx", "version": "0.1.0", "options": {}},
        "verification": {"status": "unverified", "reason": "a hand-built benchmark model"},
        "created": "2026-11-21T10:00:00Z",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return folder


def photos(count: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs (smooth colour gradients plus noise), so decoding costs what a real one does."""
    rng = np.random.default_rng(seed)
    width, height = size
    out = []
    for _ in range(count):
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-0.3, 0.3, (2, 3))
        pixels = base + x[..., None] * slope[0] + y[..., None] * slope[1] + rng.normal(0, 12, (height, width, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=88)
        out.append(buf.getvalue())
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not sorted_values:
        return float("nan")
    return float(np.percentile(np.asarray(sorted_values), q))


def run_load(host: str, port: int, images: list[bytes], total: int, clients: int, time_limit: float) -> dict[str, Any]:
    """Send ``total`` requests from ``clients`` threads (stopping early at ``time_limit`` seconds)."""
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + time_limit

    def take() -> int | None:
        nonlocal issued
        with lock:
            if issued >= total or time.monotonic() > deadline:
                return None
            issued += 1
            return issued - 1

    def client() -> None:
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            while (index := take()) is not None:
                body = images[index % len(images)]
                started = time.perf_counter()
                try:
                    connection.request("POST", "/image", body, {"Content-Type": "application/octet-stream"})
                    response = connection.getresponse()
                    payload = response.read()
                    elapsed = time.perf_counter() - started
                    if response.status != 200 or not json.loads(payload).get("predictions"):
                        with lock:
                            errors.append(f"HTTP {response.status}: {payload[:120]!r}")
                        continue
                    with lock:
                        latencies.append(elapsed)
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    connection.close()
                    connection = http.client.HTTPConnection(host, port, timeout=30)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, name=f"client-{i}") for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": issued,
        "ok": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall if wall > 0 else float("nan"),
        "latency_ms": {name: percentile(latencies, q) * 1000.0 for name, q in (("median", 50), ("p90", 90), ("p99", 99))},
        "stopped_by_time_limit": issued < total,
    }


def bare_latency_ms(predictor: Any, images: list[bytes], repeats: int) -> float:
    """Median of ``predictor.predict(bytes)`` alone: decode + preprocess + inference, no HTTP."""
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        predictor.predict(images[i % len(images)])
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", nargs="?", help="an export folder/zip/model for runtimes.load (default: a tiny ONNX model)")
    parser.add_argument("-n", "--requests", type=int, default=500, help="requests in all (default 500)")
    parser.add_argument("-c", "--concurrency", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="stop sending after this many seconds (default 120)")
    parser.add_argument("--image-size", default="640x480", help="WxH of the JPEG photos sent (default 640x480)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads for the engine (default: engine's)")
    parser.add_argument("--server-threads", type=int, default=8, help="server worker threads (default 8)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    parser.add_argument("--verbose", action="store_true", help="show the server's per-request log")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.time_limit <= 0:
        parser.error("--requests and --concurrency must be at least 1, --time-limit positive")
    try:
        width, height = (int(v) for v in args.image_size.lower().split("x"))
    except ValueError:
        parser.error(f"--image-size must look like 640x480, not {args.image_size!r}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="edgevision-bench-") as tmp:
        source = Path(args.export) if args.export else write_tiny_export(Path(tmp) / "tiny-onnx")
        with runtimes.load(source, threads=args.threads) as predictor:
            images = photos(8, (width, height))
            for image in images[:2]:
                predictor.predict(image)  # warm the engine up before timing anything
            bare = bare_latency_ms(predictor, images, repeats=min(100, max(20, args.requests // 5)))
            server = make_server(predictor, host="127.0.0.1", port=0, threads=args.server_threads)
            serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            serving.start()
            try:
                host, port = server.server_address[:2]
                result = run_load(host, port, images, args.requests, args.concurrency, args.time_limit)
            finally:
                server.shutdown()
                server.server_close()

    result |= {
        "model": str(args.export) if args.export else "tiny ONNX classifier (32x32 input, 3 tags)",
        "task": predictor.task,
        "image": f"{width}x{height} JPEG, {sum(map(len, images)) // len(images) // 1024} KB average",
        "concurrency": args.concurrency,
        "bare_predict_median_ms": bare,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lat = result["latency_ms"]
        print(f"model        {result['model']} ({result['task']})")
        print(f"load         {result['requests']} requests of {result['image']} from {args.concurrency} clients"
              f"{' (stopped by the time limit)' if result['stopped_by_time_limit'] else ''}")
        print(f"machine      {result['machine']}")
        print(f"throughput   {result['requests_per_s']:.1f} requests/s ({result['ok']} ok in {result['wall_s']:.2f} s)")
        print(f"latency      median {lat['median']:.2f} ms, p90 {lat['p90']:.2f} ms, p99 {lat['p99']:.2f} ms")
        print(f"errors       {result['errors']}" + (f"  e.g. {result['first_errors'][0]}" if result["errors"] else ""))
        print(f"bare predict median {bare:.2f} ms per image (decode + preprocess + inference, no HTTP)")
    return 0 if result["errors"] == 0 and result["ok"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
