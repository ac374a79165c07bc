"""Few-shot accuracy benchmark on Fashion-MNIST (Zalando product photos, 28x28 greyscale).

What it measures
----------------
For each N in ``--shots`` (training images per class) and each training mode in ``--modes``:

* N images per class are drawn deterministically (``--seed``) from the official Fashion-MNIST
  training split (exact duplicate images are skipped, so every class really gets N distinct
  images; the 10-shot set is a subset of the 25-shot set, and so on), written as 28x28 greyscale
  PNG files into a folder-per-tag tree (tags: T-shirt_top, Trouser, Pullover, Dress, Coat, Sandal,
  Shirt, Sneaker, Bag, Ankle_boot) and imported into a fresh project in a temporary
  EDGEVISION_HOME through edgevision's Python API (``Project.create`` / ``import_folder`` /
  ``train``). edgevision's own preprocessing converts to RGB and resizes.
* The trained iteration scores a fixed, class-balanced subset (``--test``, default 2,000 images,
  always drawn with seed 0) of the official test split with ``Iteration.predict_probabilities``;
  the table reports top-1 accuracy on it, next to the iteration's own cross-validated (quick) or
  hold-out (advanced) accuracy from ``it.info["metrics"]``.
* Training cost: wall time around ``project.train`` (and ``it.info["duration_s"]``, edgevision's
  own figure) and the peak resident memory of the process that trained. Every (N, mode) run
  happens in a fresh child process (this script re-invoked with a hidden ``--worker`` flag), so
  peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss`` in the child, read right after training) and
  times are per run. TensorFlow is imported before the timer starts (its import time is reported
  separately in the JSON as ``tf_import_s``); the timed training does include building the
  backbone from its weights file (about 2-3 s) since every run starts cold with an empty
  embedding cache.

The dataset comes from Debian's ``dataset-fashion-mnist`` package (IDX files under
/usr/share/datasets/fashion-mnist/); the script installs it with apt-get when it is missing and
it runs as root, otherwise it says which command to run.

How to run
----------
    .venv/bin/python bench/fashion_mnist.py                                 # shots 10,25,50; quick and advanced
    .venv/bin/python bench/fashion_mnist.py --shots 50 --modes quick
    .venv/bin/python bench/fashion_mnist.py --shots 50 --modes advanced --budget 3
    .venv/bin/python bench/fashion_mnist.py --shots 10,25,50 --modes quick --json   # results as JSON

Progress goes to stderr; the table (or the JSON with ``--json``) goes to stdout. ``--keep`` keeps
the temporary folders (images, projects) for inspection; ``--verbose`` shows the children's logs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_PACKAGE = "dataset-fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")
TEST_SEED = 0  # the test subset is fixed whatever --seed says
PREDICT_CHUNK = 200
PROJECT_NAME = "fmnist-10"

TARGETS = """\
Targets (for comparison):
  quick     >= 0.87 top-1 at 50/tag (>= 0.79 at 10/tag), in <= 20 s and <= 2 GB peak RSS for 500 images
  advanced  >= 0.88 top-1
  baseline  linear probe: 0.769 / 0.828 / 0.848 at 10 / 25 / 50 per tag"""


def log(msg: str) -> None:
    print(f"[fashion_mnist] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- dataset
def _find(stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (DATA_DIR / name).is_file():
            return DATA_DIR / name
    return None


def _have_dataset() -> bool:
    return all(_find(stem) is not None for stem in FILES.values())


def ensure_dataset() -> None:
    """Install dataset-fashion-mnist with apt-get when its files are missing (root only)."""
    if _have_dataset():
        return
    install = ["apt-get", "install", "-y", APT_PACKAGE]
    apt = shutil.which("apt-get")
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if apt is None or not is_root:
        why = "apt-get is not available" if apt is None else "this script is not running as root"
        sys.exit(
            f"fashion_mnist: the Fashion-MNIST files are missing from {DATA_DIR} and {why}.\n"
            f"Install them with:\n    sudo apt-get install -y {APT_PACKAGE}\n"
            f"(run `sudo apt-get update` first if the package is not found), then run this script again."
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing {APT_PACKAGE}: {' '.join(install)}")
    if subprocess.run(install, env=env).returncode != 0:
        log("install failed; running apt-get update and trying again")
        subprocess.run(["apt-get", "update"], env=env)
        if subprocess.run(install, env=env).returncode != 0:
            sys.exit(f"fashion_mnist: `{' '.join(install)}` failed; see apt-get's messages above.")
    if not _have_dataset():
        sys.exit(
            f"fashion_mnist: {APT_PACKAGE} is installed but the IDX files are not under {DATA_DIR}; "
            f"check `dpkg -L {APT_PACKAGE}`."
        )


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) into a numpy array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=4 + 4 * ndim)
    return data.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def load_split(kind: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(_find(FILES[f"{kind}_images"]))  # type: ignore[arg-type]
    labels = read_idx(_find(FILES[f"{kind}_labels"])).astype(np.int64)  # type: ignore[arg-type]
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"unexpected Fashion-MNIST {kind} shapes: {images.shape}, {labels.shape}")
    return images, labels


def select_train(labels: np.ndarray, images: np.ndarray, n: int, seed: int) -> dict[int, list[int]]:
    """Per class, the first ``n`` distinct images of a seeded permutation (prefixes nest across n)."""
    rng = np.random.default_rng(seed)
    seen: set[bytes] = set()
    out: dict[int, list[int]] = {}
    for c in range(len(CLASSES)):
        picked: list[int] = []
        for i in rng.permutation(np.flatnonzero(labels == c)):
            key = images[i].tobytes()
            if key in seen:  # an exact duplicate would be stored once by the import
                continue
            seen.add(key)
            picked.append(int(i))
            if len(picked) == n:
                break
        if len(picked) < n:
            raise ValueError(f"class {CLASSES[c]} has only {len(picked)} distinct images")
        out[c] = picked
    return out


def select_test(labels: np.ndarray, total: int) -> np.ndarray:
    """A fixed, class-balanced subset of the test split (seed 0), sorted by index."""
    rng = np.random.default_rng(TEST_SEED)
    k = len(CLASSES)
    per_class = [total // k + (1 if c < total % k else 0) for c in range(k)]
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:m] for c, m in enumerate(per_class)]
    return np.sort(np.concatenate(chosen))


def write_folder(root: Path, images: np.ndarray, picks: dict[int, list[int]], n: int) -> Path:
    from PIL import Image

    folder = root / f"train-{n}"
    for c, idx in picks.items():
        d = folder / CLASSES[c]
        d.mkdir(parents=True, exist_ok=True)
        for i in idx[:n]:
            Image.fromarray(images[i], mode="L").save(d / f"train-{i:05d}.png")
    return folder


# ---------------------------------------------------------------------------- worker (child process)
def worker(args: argparse.Namespace) -> None:
    """Train one (N, mode) run in this fresh process and write its result as JSON."""
    import resource

    result: dict[str, Any] = {"shots": args.shots_one, "mode": args.mode, "domain": args.domain}
    try:
        home = Path(args.home)
        os.environ["EDGEVISION_HOME"] = str(home)  # belt and braces: home= is passed explicitly below
        t0 = time.perf_counter()
        from edgevision._tf import import_tf

        import_tf()
        result["tf_import_s"] = round(time.perf_counter() - t0, 2)
        from edgevision.store.project import Project

        project = Project.create(PROJECT_NAME, "multiclass", args.domain, home=home)
        t0 = time.perf_counter()
        report = project.import_folder(args.folder)
        result["import_s"] = round(time.perf_counter() - t0, 2)
        result["import"] = {"added": len(report.added), "duplicates": len(report.duplicates),
                            "skipped": report.skipped[:10], "tags_created": len(report.tags_created)}
        if report.duplicates or report.skipped:
            log(f"import: {len(report.duplicates)} duplicates, {len(report.skipped)} skipped: {report.skipped[:3]}")
        options: dict[str, Any] = {"seed": args.seed}
        if args.mode == "advanced":
            options["budget"] = args.budget
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        it = project.train(args.mode, **options)
        result["train_wall_s"] = round(time.perf_counter() - t0, 2)
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        result["rss_before_train_mb"] = round(rss_before / 1024, 1)
        result["duration_s"] = it.info.get("duration_s")
        metrics = it.info.get("metrics", {})
        result["own_accuracy"] = metrics.get("accuracy")
        result["own_accuracy_folds"] = metrics.get("folds", {}).get("accuracy")
        result["evaluation_method"] = it.info.get("evaluation_method") or metrics.get("method")
        result["hyperparameters"] = it.info.get("hyperparameters")
        result["image_count"] = it.info.get("image_count")
        if it.info.get("note"):
            result["note"] = it.info["note"]

        test = np.load(args.test_file)
        x, y = test["images"], test["labels"]
        name_to_class = {name.lower(): c for c, name in enumerate(CLASSES)}
        try:
            col_class = np.array([name_to_class[label.lower()] for label in it.labels])
        except KeyError as exc:
            raise RuntimeError(f"iteration labels {it.labels} do not match the classes {CLASSES}") from exc
        t0 = time.perf_counter()
        preds = []
        for start in range(0, len(x), PREDICT_CHUNK):
            probs = it.predict_probabilities([im for im in x[start : start + PREDICT_CHUNK]])
            preds.append(col_class[np.argmax(probs, axis=1)])
        pred = np.concatenate(preds)
        result["predict_s"] = round(time.perf_counter() - t0, 2)
        result["test_images"] = int(len(y))
        result["test_accuracy"] = float(np.mean(pred == y))
        result["test_accuracy_per_class"] = {
            CLASSES[c]: round(float(np.mean(pred[y == c] == c)), 3) for c in range(len(CLASSES)) if np.any(y == c)
        }
        result["peak_rss_total_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        project.close()
    except BaseException as exc:  # report, never hide: the parent prints it
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
    Path(args.result).write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")


def run_child(args: argparse.Namespace, tmp: Path, n: int, mode: str, folder: Path, test_file: Path) -> dict[str, Any]:
    home = tmp / f"home-{n}-{mode}"
    result_file = tmp / f"result-{n}-{mode}.json"
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker",
        "--shots-one", str(n), "--mode", mode, "--domain", args.domain, "--seed", str(args.seed),
        "--budget", str(args.budget), "--home", str(home), "--folder", str(folder),
        "--test-file", str(test_file), "--result", str(result_file),
    ]
    env = dict(os.environ, EDGEVISION_HOME=str(home))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t0 = time.perf_counter()
    if args.verbose:
        proc = subprocess.run(cmd, env=env)
        output = ""
    else:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = proc.stdout or ""
    elapsed = time.perf_counter() - t0
    if result_file.is_file():
        result = json.loads(result_file.read_text(encoding="utf-8"))
    else:
        result = {"shots": n, "mode": mode, "domain": args.domain,
                  "error": f"worker exited with status {proc.returncode} without a result"}
    result["child_wall_s"] = round(elapsed, 2)
    if "error" in result:
        tail = "\n".join(output.splitlines()[-40:])
        log(f"run shots={n} mode={mode} FAILED: {result['error']}\n{result.get('traceback', '')}"
            + (f"\n--- last lines of the worker's output ---\n{tail}" if tail else ""))
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------- table
def kept_test_set(home: Path, labels: list[str], size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The test images a ``quantization.py --home HOME`` run kept (``HOME-data/test.npz``), first ``n``:
    (uint8 images resized as the runtime does, (n, size, size, 3); each one's column in ``labels``)."""
    from runtimes.preprocess import preprocess

    test = np.load(home.parent / f"{home.name}-data" / "test.npz")
    n = min(n, len(test["labels"]))
    x = np.stack([preprocess(im, (size, size)).round().astype(np.uint8) for im in test["images"][:n]])
    classes = {name.lower(): c for c, name in enumerate(CLASSES)}
    column = {classes[lab.lower()]: j for j, lab in enumerate(labels)}
    return x, np.array([column[int(c)] for c in test["labels"][:n]])


def npy_cached(folder: Path, name: str, compute: Any, say: Any = log) -> np.ndarray:
    """``folder/name.npy`` if it is there, else ``compute()`` saved there (and how long it took, said)."""
    path = folder / f"{name}.npy"
    if path.exists():
        return np.load(path)
    t = time.perf_counter()
    value = compute()
    np.save(path, value)
    say(f"{name}: {time.perf_counter() - t:.0f} s")
    return value


def text_table(lines: list[tuple[Any, ...]]) -> str:
    """Rows (the first one the header) as left-aligned columns."""
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: list[dict[str, Any]], test_n: int) -> str:
    head = ("shots", "mode", "domain", f"top1@test{test_n}", "own acc (CV/hold-out)", "train s (wall / info)",
            "peak RSS MB")
    rows = []
    for r in results:
        folds = r.get("own_accuracy_folds") or {}
        own = _fmt(r.get("own_accuracy"), ".3f")
        if folds.get("std") is not None and r.get("own_accuracy") is not None:
            own += f" (±{folds['std']:.3f})"
        if "error" in r:
            rows.append((str(r["shots"]), r["mode"], r["domain"], "ERROR", r["error"][:60], "", ""))
            continue
        rows.append((
            str(r["shots"]), r["mode"], r["domain"], _fmt(r.get("test_accuracy"), ".3f"), own,
            f"{_fmt(r.get('train_wall_s'), '.1f')} / {_fmt(r.get('duration_s'), '.1f')}",
            _fmt(r.get("peak_rss_mb"), ".0f"),
        ))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shots", default="10,25,50", help="training images per class, comma-separated (default 10,25,50)")
    p.add_argument("--modes", default="quick,advanced", help="training modes, comma-separated (default quick,advanced)")
    p.add_argument("--budget", type=float, default=3.0, help="advanced mode's time budget in minutes (default 3)")
    p.add_argument("--domain", default="general-compact", help="edgevision domain (default general-compact)")
    p.add_argument("--test", type=int, default=2000, help="test images, class-balanced from the official test split (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="selects the training images and seeds training (default 0)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    p.add_argument("--keep", action="store_true", help="keep the temporary images and projects")
    p.add_argument("--verbose", action="store_true", help="show the worker processes' output")
    # hidden: one run in a fresh process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--shots-one", "--mode", "--home", "--folder", "--test-file", "--result"):
        p.add_argument(name, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.shots_one = int(args.shots_one)
        return args
    try:
        args.shots_list = [int(s) for s in args.shots.split(",") if s.strip()]
    except ValueError:
        p.error(f"--shots must be comma-separated integers, got {args.shots!r}")
    if not args.shots_list or min(args.shots_list) < 5:
        p.error("--shots: each value must be at least 5 (edgevision needs 5 images per tag)")
    args.modes_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes_list if m not in ("quick", "advanced")]
    if bad or not args.modes_list:
        p.error(f"--modes: choose from quick, advanced (got {args.modes!r})")
    if not args.budget > 0:
        p.error("--budget must be a positive number of minutes")
    if not 10 <= args.test <= 10000:
        p.error("--test must be between 10 and 10000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    ensure_dataset()
    tmp = Path(tempfile.mkdtemp(prefix="edgevision-fmnist-"))
    results: list[dict[str, Any]] = []
    try:
        train_x, train_y = load_split("train")
        test_x, test_y = load_split("test")
        picks = select_train(train_y, train_x, max(args.shots_list), args.seed)
        test_idx = select_test(test_y, args.test)
        test_file = tmp / "test.npz"
        np.savez(test_file, images=test_x[test_idx], labels=test_y[test_idx], index=test_idx)
        folders = {n: write_folder(tmp / "images", train_x, picks, n) for n in args.shots_list}
        del train_x, test_x
        log(f"data in {tmp}: {len(test_idx)} test images; training sets {', '.join(f'{n}/class' for n in args.shots_list)}")
        for n in args.shots_list:
            for mode in args.modes_list:
                log(f"training shots={n} mode={mode} domain={args.domain}"
                    + (f" budget={args.budget:g} min" if mode == "advanced" else "") + " in a fresh process ...")
                r = run_child(args, tmp, n, mode, folders[n], test_file)
                if "error" not in r:
                    log(f"  top-1 {r['test_accuracy']:.3f}, own {_fmt(r.get('own_accuracy'), '.3f')}, "
                        f"train {r['train_wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB")
                    if r.get("note"):
                        log(f"  {r['note']}")
                results.append(r)
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps({"test_images": args.test, "seed": args.seed, "budget_min": args.budget,
                          "results": results}, indent=1, default=str))
    else:
        print(table(results, args.test))
        print()
        print(TARGETS)
        for r in results:
            if r.get("note"):
                print(f"note shots={r['shots']} {r['mode']}: {r['note']}")
        print(f"(seed {args.seed}; test: {args.test} images, class-balanced from the official test split, seed {TEST_SEED}; "
              f"train s = wall time around project.train / it.info['duration_s'], including the backbone build; "
              f"peak RSS = ru_maxrss of the child process after training; {os.cpu_count()} CPU cores)")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
