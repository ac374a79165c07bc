"""The ``edgevision`` command line. TensorFlow is imported only by the commands that need it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from edgevision import config
from edgevision.errors import EdgevisionError
from runtimes.argtypes import port, positive_float, positive_int, probability

#: The environment variable holding the API key when --key is not given (the same as edgevision-run serve's).
API_KEY_ENV = "EDGEVISION_API_KEY"

EPILOG = """\
examples:
  edgevision demo                                   train on a generated sample, end to end
  edgevision project create flowers --type multiclass
  edgevision import flowers ~/photos                # ~/photos/<tag>/<image>.jpg
  edgevision import cars instances.json --format coco   # detection: coco, voc or yolo
  edgevision train flowers                          # quick: seconds; --mode advanced fine-tunes
  edgevision evaluate flowers --threshold 0.7
  edgevision predict flowers rose.jpg --json
  edgevision export flowers --format tflite --flavor int8   # verified; --list shows formats

Projects live under $EDGEVISION_HOME (default ~/.edgevision); --home overrides it.
exit codes: 0 ok, 1 failure, 2 usage error, 3 verification failed, 130 interrupted.
"""


IMPORT_EPILOG = """\
formats (classification: folder, csv; detection: coco, voc, yolo):
  folder  ROOT/<tag>/**/<image>
  csv     rows 'path,tag[;tag...]', paths relative to the CSV's folder
  coco    a COCO .json, or the folder holding it; images next to it or in images/
  voc     a folder of Pascal VOC .xml files, or a root with Annotations/ + JPEGImages/;
          each .xml's <filename> names its image
  yolo    a folder of images with same-name .txt labels (or images/ + labels/), and
          classes.txt, obj.names or data.yaml naming the classes

Bad annotations (boxes outside the image, zero size, unknown classes, missing images, paths
leaving the dataset folder) are reported by file and line or annotation id and skipped, never
clipped. Importing an image that is already in the project adds only its new regions.

examples:
  edgevision import cars ~/data/cars/annotations/instances.json --format coco
  edgevision import cars ~/data/VOC2012 --format voc
  edgevision import cars ~/data/yolo-cars --format yolo --json
"""

EXPORT_DATA_EPILOG = """\
layouts written (each one imports back with `edgevision import NAME DEST/... --format F`):
  folder  DEST/<tag>/<image>
  csv     DEST/labels.csv + DEST/images/
  coco    DEST/annotations.json + DEST/images/          (pixel boxes [x, y, width, height])
  voc     DEST/Annotations/<image>.xml + DEST/JPEGImages/
  yolo    DEST/images/ + DEST/labels/<image>.txt + DEST/classes.txt + DEST/data.yaml

example:
  edgevision export-data cars ./cars-yolo --format yolo
"""

REGIONS_EPILOG = """\
A region is a tagged box on an image of a detection project. Coordinates are fractions of the
image's width and height: LEFT TOP WIDTH HEIGHT, each 0..1, with LEFT+WIDTH and TOP+HEIGHT <= 1.
Images without regions are background examples. At most 300 regions per image.

examples:
  edgevision images list cars                                  # find image ids
  edgevision regions add cars 3f2a9c car 0.10 0.20 0.35 0.40   # a 'car' box
  edgevision regions list cars --image 3f2a9c --json
  edgevision regions remove cars 8be41d
"""


SERVE_API_EPILOG = """\
The hosted service's training SDK then works against it with only a new endpoint:
  from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
  from msrest.authentication import ApiKeyCredentials
  trainer = CustomVisionTrainingClient("http://127.0.0.1:5000",
                                       ApiKeyCredentials(in_headers={"Training-key": "KEY"}))
Routes that exist (and those that do not): docs/training-api.md.

examples:
  edgevision serve-api                                # http://127.0.0.1:5000/, no key
  edgevision portal --port 8000                       # and open the browser on it
  edgevision serve-api --host 0.0.0.0 --key s3cret    # reachable from the network: a key is required
"""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to document the CLI)."""
    p = argparse.ArgumentParser(
        prog="edgevision",
        description="Train compact image classifiers on your own photos, offline; evaluate them honestly.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--home", help="folder holding the projects (default: $EDGEVISION_HOME or ~/.edgevision)")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    p.add_argument("--version", action="version", version="edgevision 0.1.0")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, **kw)

    def json_flag(q: argparse.ArgumentParser) -> None:
        q.add_argument("--json", action="store_true", help="print machine-readable JSON only")

    # project
    proj = cmd("project", "create, list, show or delete projects")
    ps = proj.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = ps.add_parser("create", help="create a project")
    q.add_argument("name")
    q.add_argument("--type", default="multiclass", choices=["multiclass", "multilabel", "detection"],
                   help="multiclass: one tag per image; multilabel: any number; detection: regions (default multiclass)")
    q.add_argument("--domain", default=None, help="compact domain (see `edgevision domains`; default general-compact)")
    q.add_argument("--description", default="")
    json_flag(q)
    q = ps.add_parser("list", help="list projects")
    json_flag(q)
    q = ps.add_parser("show", help="show a project's tags, image counts and iterations")
    q.add_argument("name")
    json_flag(q)
    q = ps.add_parser("delete", help="delete a project with its images and iterations")
    q.add_argument("name")
    q.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    # tags
    tag = cmd("tag", "list, create, rename or delete tags")
    ts = tag.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = ts.add_parser("list", help="list tags with image counts")
    q.add_argument("name")
    json_flag(q)
    q = ts.add_parser("create", help="create a tag ('Negative' = images with none of the tags)")
    q.add_argument("name")
    q.add_argument("tag")
    q = ts.add_parser("rename", help="rename a tag")
    q.add_argument("name")
    q.add_argument("old")
    q.add_argument("new")
    q = ts.add_parser("delete", help="delete a tag (its images stay, without it)")
    q.add_argument("name")
    q.add_argument("tag")

    # images
    img = cmd("images", "add, list, re-tag or remove images")
    is_ = img.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = is_.add_parser("add", help="add image files or folders, all with the given tags")
    q.add_argument("name")
    q.add_argument("paths", nargs="+", metavar="PATH")
    q.add_argument("--tag", action="append", default=[], help="tag for every added image (repeatable)")
    json_flag(q)
    q = is_.add_parser("list", help="list images")
    q.add_argument("name")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--tag", help="only images with this tag")
    g.add_argument("--untagged", action="store_true", help="only images with no tag")
    json_flag(q)
    q = is_.add_parser("retag", help="replace an image's tags")
    q.add_argument("name")
    q.add_argument("image_id")
    q.add_argument("--tag", action="append", default=[], help="new tag (repeatable; none = untagged)")
    q = is_.add_parser("remove", help="remove images by id")
    q.add_argument("name")
    q.add_argument("image_ids", nargs="+", metavar="IMAGE_ID")

    q = cmd("import", "import a labelled image set into a project (one transaction: an interrupted import leaves nothing)",
            epilog=IMPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("name")
    q.add_argument("path", help="folder-per-tag root (ROOT/<tag>/<image>), a CSV file (path,tag[;tag...]), "
                                "or a COCO .json / VOC folder / YOLO folder for detection projects")
    q.add_argument("--format", choices=["folder", "csv", "coco", "voc", "yolo"], default=None,
                   help="default: csv for a .csv file, coco for a .json file, else folder "
                        "(detection projects: give coco, voc or yolo)")
    json_flag(q)

    q = cmd("export-data", "write a project's images (and regions) out as folder-per-tag, CSV, COCO, VOC or YOLO",
            epilog=EXPORT_DATA_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("name")
    q.add_argument("dest")
    q.add_argument("--format", choices=["folder", "csv", "coco", "voc", "yolo"], default=None,
                   help="default: folder for classification projects, coco for detection projects")
    json_flag(q)

    # regions (detection)
    reg = cmd("regions", "list, add or remove the tagged boxes (regions) of a detection project's images",
              epilog=REGIONS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    rs = reg.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = rs.add_parser("list", help="list regions, of all images or of one",
                      description="List regions: id, image id, tag, left top width height (fractions of the image).")
    q.add_argument("name")
    q.add_argument("--image", default=None, metavar="IMAGE_ID", help="only this image's regions (id or 6+ char prefix)")
    json_flag(q)
    q = rs.add_parser("add", help="add a box: LEFT TOP WIDTH HEIGHT as fractions (0..1) of the image size",
                      description="Add a tagged box to an image. LEFT TOP WIDTH HEIGHT are fractions of the image's "
                                  "width and height (0..1); LEFT+WIDTH and TOP+HEIGHT must be <= 1. "
                                  "Example: edgevision regions add cars 3f2a9c car 0.10 0.20 0.35 0.40")
    q.add_argument("name")
    q.add_argument("image_id", metavar="IMAGE_ID")
    q.add_argument("tag", metavar="TAG", help="the region's tag (created if new)")
    for coord in ("left", "top", "width", "height"):
        q.add_argument(coord, type=float, metavar=coord.upper())
    json_flag(q)
    q = rs.add_parser("remove", help="remove regions by id (their tags stay)")
    q.add_argument("name")
    q.add_argument("region_ids", nargs="+", metavar="REGION_ID")

    q = cmd("train", "train a new iteration")
    q.add_argument("name")
    q.add_argument("--mode", choices=["quick", "advanced"], default="quick",
                   help="quick: linear head on cached pretrained features (seconds); "
                        "advanced: fine-tune with augmentation within --budget")
    q.add_argument("--budget", type=positive_float, default=None, help="advanced mode time budget in minutes (default 10)")
    q.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same iteration")
    q.add_argument("--folds", type=int, default=None, help="cross-validation folds in quick mode (default 5)")
    q.add_argument("--qat", action="store_true",
                   help="also fine-tune a quantization-aware copy (classifiers); `export --format tflite --flavor int8` "
                        "then converts it")
    q.add_argument("--prune", type=float, default=None, metavar="SPARSITY",
                   help="zero this fraction (0 < s < 1) of the backbone's conv weights by magnitude pruning "
                        "(classifiers); smaller only once compressed")
    q.add_argument("--int8-ready", action="store_true",
                   help="quick mode, classifiers: train a float model whose int8 TFLite export agrees with it "
                        "(backbone weights on the int8 grid, head fitted on int8 features too; ~90 s more for 500 images on "
                        "2 cores). "
                        "The way to go when you will ship `--flavor int8`")
    json_flag(q)

    q = cmd("iterations", "list a project's iterations")
    q.add_argument("name")
    json_flag(q)
    it = cmd("iteration", "show or delete one iteration")
    its = it.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = its.add_parser("show", help="show an iteration's record and figures")
    q.add_argument("name")
    q.add_argument("number", type=int)
    json_flag(q)
    q = its.add_parser("delete", help="delete an iteration")
    q.add_argument("name")
    q.add_argument("number", type=int)

    q = cmd("evaluate", "precision, recall and AP of an iteration (held-out images or an external set)")
    q.add_argument("name")
    q.add_argument("--iteration", type=int, default=None, help="iteration number (default: latest)")
    q.add_argument("--data", default=None, metavar="PATH",
                   help="external test set: a folder-per-tag set (classifiers), or for detectors a COCO json / "
                        "VOC or YOLO folder (say which with --format)")
    q.add_argument("--format", default=None, choices=["coco", "voc", "yolo"],
                   help="detectors: the format of --data (a .json file defaults to coco)")
    q.add_argument("--threshold", type=probability, default=0.5, help="probability threshold (default 0.5)")
    q.add_argument("--overlap", type=probability, default=0.3,
                   help="detectors: IoU at which a predicted box matches a true one (default 0.3)")
    json_flag(q)

    q = cmd("report", "write an offline HTML report of an iteration: per-tag figures, precision-recall curves, "
                      "confusion matrix, mistakes with their images, export and benchmark figures")
    q.add_argument("name")
    q.add_argument("--iteration", type=int, default=None, help="iteration number (default: latest)")
    q.add_argument("--out", default=None, metavar="DIR",
                   help="report folder (default: <project>/reports/<iteration>/); an earlier report there is replaced")
    q.add_argument("--threshold", type=probability, default=0.5, help="probability threshold (default 0.5)")
    q.add_argument("--overlap", type=probability, default=None,
                   help="detectors: IoU at which a predicted box matches a true one (default 0.3)")
    q.add_argument("--open", action="store_true", help="open the report in the web browser")
    json_flag(q)

    q = cmd("predict", "predict tags for images with a trained iteration")
    q.add_argument("name")
    q.add_argument("images", nargs="+", metavar="IMAGE")
    q.add_argument("--iteration", type=int, default=None, help="iteration number (default: latest)")
    q.add_argument("--threshold", type=probability, default=0.0, help="hide predictions below this probability")
    q.add_argument("--max-detections", type=positive_int, default=None,
                   help="detectors: at most this many boxes per image (default: all above --threshold)")
    json_flag(q)

    q = cmd("export", "export an iteration to TFLite, ONNX, CoreML, SavedModel or Docker, verified against the model")
    q.add_argument("name", nargs="?", help="project name")
    q.add_argument("--list", action="store_true", help="list the export formats and exit")
    q.add_argument("--iteration", type=int, default=None, help="iteration number (default: latest)")
    q.add_argument("--format", default=None, help="export format (see --list)")
    q.add_argument("--flavor", default=None, help="format flavor, e.g. float32, float16, int8 (default: the format's)")
    q.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="exporter option (repeatable)")
    q.add_argument("--out", default=None, help="export folder (default: <project>/exports/<iteration>-<format>-<flavor>)")
    q.add_argument("--zip", action="store_true", help="also write <out>.zip")
    json_flag(q)

    q = cmd("benchmark", "export an iteration to every format/flavor (or reuse those exports) and compare status, "
                         "size, device-runtime latency, accuracy or mAP, and agreement with the trained model")
    q.add_argument("name", help="project name")
    q.add_argument("--iteration", type=int, default=None, help="iteration number (default: latest)")
    q.add_argument("--formats", default=None, metavar="F[,F/FLAVOR...]",
                   help="only these formats, or format/flavor pairs (default: every registered format for the task)")
    q.add_argument("--flavors", default=None, metavar="FLAVOR[,...]", help="only these flavors, e.g. float32,int8")
    q.add_argument("--min-metric", type=probability, default=None, metavar="X",
                   help="exit code 1 when a verified row's accuracy (or mAP@0.5) is below X (0..1)")
    json_flag(q)

    q = cmd("domains", "list compact domains and whether their pretrained weights are installed")
    json_flag(q)

    for name, text in (("serve-api", "serve the training REST API (shaped after the hosted Training API v3.x; its SDK "
                                      "works with endpoint=http://HOST:PORT) and the portal, until Ctrl-C"),
                       ("portal", "start the training API and open the portal (the local web UI) in the browser")):
        q = cmd(name, text, epilog=SERVE_API_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; others need --key)")
        q.add_argument("--port", type=port, default=5000, help="port (default 5000; 0 picks a free one)")
        q.add_argument("--key", default=None, metavar="KEY",
                       help=f"require this key in the Training-Key (and Prediction-Key) header "
                            f"(default: ${API_KEY_ENV}; none: no key, loopback only)")
        if name == "portal":
            q.add_argument("--no-browser", action="store_true", help="do not open a browser, only print the address")

    q = cmd("demo", "generate a sample dataset, create a project, train, evaluate and predict")
    q.add_argument("--images-per-tag", type=int, default=12, help="sample images per tag (default 12)")
    q.add_argument("--skip-detection", action="store_true",
                   help="only the classification half (the detection half trains a detector: ~1-2 min more)")
    return p


# ---------------------------------------------------------------------------- handlers
def _project(args: argparse.Namespace) -> Any:
    from edgevision.store.project import Project

    return Project.open(args.name, home=args.home)


def _print_import(report: Any, as_json: bool) -> None:
    from edgevision.cli.render import err, out, print_json
    from rich.text import Text

    if as_json:
        print_json(report.to_dict())
        return
    out.print(f"added {len(report.added)} images"
              + (f", {len(report.duplicates)} duplicates already in the project" if report.duplicates else "")
              + (f", skipped {len(report.skipped)}" if report.skipped else ""))
    if report.regions_added or report.duplicate_regions:
        out.print(f"added {report.regions_added} regions"
                  + (f" ({report.duplicate_regions} identical to ones already there, not added again)"
                     if report.duplicate_regions else ""))
    if report.tags_created:
        out.print(f"new tags: {', '.join(report.tags_created)}")
    for path, reason in report.skipped[:50]:
        err.print(Text.assemble(("skipped ", "yellow"), f"{path}: {reason}"))
    if len(report.skipped) > 50:
        err.print(f"… and {len(report.skipped) - 50} more skipped (use --json for the full list)")
    for path, existing in report.duplicates[:10]:
        err.print(f"duplicate {path} (already stored as image {existing[:8]})")


def cmd_project(args: argparse.Namespace) -> int:
    from edgevision.cli.render import out, print_json
    from edgevision.store.project import Project
    from rich.table import Table

    if args.action == "create":
        project = Project.create(args.name, args.type, args.domain, description=args.description, home=args.home)
        if args.json:
            print_json(project.summary())
        else:
            out.print(f"created {project.type} project {project.name} (domain {project.domain}) at {project.path}")
            out.print(f"next: edgevision import {project.name} PATH")
    elif args.action == "list":
        projects = Project.list(home=args.home)
        if args.json:
            print_json([{"name": p.name, "type": p.type, "domain": p.domain, "images": p.image_count(),
                         "iterations": len(p.iterations())} for p in projects])
            return 0
        if not projects:
            out.print(f"no projects under {config.home(args.home)}; create one with `edgevision project create NAME`")
            return 0
        table = Table("name", "type", "domain", "images", "iterations")
        for p in projects:
            table.add_row(p.name, p.type, p.domain, str(p.image_count()), str(len(p.iterations())))
        out.print(table)
    elif args.action == "show":
        s = _project(args).summary()
        if args.json:
            print_json(s)
            return 0
        detection = s["type"] == "detection"
        unmarked = f"{s['untagged']} without regions" if detection else f"{s['untagged']} untagged"
        out.print(f"{s['name']} — {s['type']}, domain {s['domain']}, {s['images']} images "
                  f"({unmarked}), iterations: {', '.join(map(str, s['iterations'])) or 'none'}")
        table = Table("tag", "images", "regions", "kind") if detection else Table("tag", "images", "kind")
        for t in s["tags"]:
            table.add_row(t["name"], str(t["images"]), *([str(t.get("regions", 0))] if detection else []), t["kind"])
        out.print(table)
    elif args.action == "delete":
        project = _project(args)
        if not args.yes:
            if not sys.stdin.isatty():
                raise EdgevisionError(f"refusing to delete {args.name!r} without confirmation; add --yes")
            answer = input(f"delete project {args.name!r} with {project.image_count()} images? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                out.print("kept")
                return 1
        project.delete()
        out.print(f"deleted project {args.name}")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    from edgevision.cli.render import out, print_json

    project = _project(args)
    if args.action == "list":
        tags = project.tags()
        if args.json:
            print_json([{"id": t.id, "name": t.name, "kind": t.kind, "images": t.image_count} for t in tags])
        else:
            for t in tags:
                out.print(f"{t.name}\t{t.image_count} images" + ("\t(negative)" if t.kind == "negative" else ""))
    elif args.action == "create":
        t = project.create_tag(args.tag)
        out.print(f"created tag {t.name}")
    elif args.action == "rename":
        t = project.rename_tag(args.old, args.new)
        out.print(f"renamed {args.old} → {t.name}")
    elif args.action == "delete":
        n = project.delete_tag(args.tag)
        out.print(f"deleted tag {args.tag} (removed from {n} images)")
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from edgevision.cli.render import out, print_json, progress_bar

    project = _project(args)
    if args.action == "add":
        with progress_bar() as progress:
            report = project.add_images(args.paths, args.tag, progress=progress)
        _print_import(report, args.json)
    elif args.action == "list":
        records = project.images(args.tag, untagged=args.untagged)
        if args.json:
            print_json([{"id": r.id, "file": str(r.path), "original_name": r.original_name, "width": r.width,
                         "height": r.height, "tags": list(r.tags)} for r in records])
        else:
            for r in records:
                out.print(f"{r.id}\t{r.original_name}\t{r.width}x{r.height}\t{';'.join(r.tags) or '(untagged)'}")
    elif args.action == "retag":
        r = project.set_image_tags(args.image_id, args.tag)
        out.print(f"{r.id}: {', '.join(r.tags) or '(untagged)'}")
    elif args.action == "remove":
        out.print(f"removed {project.remove_images(args.image_ids)} images")
    return 0


DETECTION_FORMATS = ("coco", "voc", "yolo")


def cmd_import(args: argparse.Namespace) -> int:
    from edgevision.cli.render import progress_bar
    from edgevision.errors import UsageError

    project = _project(args)
    lower = args.path.lower()
    fmt = args.format or ("csv" if lower.endswith(".csv") else "coco" if lower.endswith(".json") else "folder")
    if project.type == "detection" and fmt not in DETECTION_FORMATS:
        raise UsageError(f"project {project.name!r} is a detection project: import annotated images with "
                         "--format coco, voc or yolo (see `edgevision import --help`)")
    with progress_bar() as progress:
        if fmt in DETECTION_FORMATS:
            report = project.import_detection(args.path, fmt, progress=progress)
        elif fmt == "csv":
            report = project.import_csv(args.path, progress=progress)
        else:
            report = project.import_folder(args.path, progress=progress)
    _print_import(report, args.json)
    return 0 if report.added or report.duplicates or not report.skipped else 1


def cmd_export_data(args: argparse.Namespace) -> int:
    from edgevision.cli.render import out, print_json

    project = _project(args)
    fmt = args.format or ("coco" if project.type == "detection" else "folder")
    if fmt in DETECTION_FORMATS:
        path = project.export_detection(args.dest, fmt)
    else:
        path = project.export_csv(args.dest) if fmt == "csv" else project.export_folder(args.dest)
    regions = len(project.regions()) if project.type == "detection" else None
    if args.json:
        print_json({"format": fmt, "path": str(path), "images": project.image_count(),
                    **({"regions": regions} if regions is not None else {})})
    else:
        out.print(f"wrote {project.image_count()} images" + (f" with {regions} regions" if regions is not None else "")
                  + f" to {path} ({fmt})")
    return 0


def cmd_regions(args: argparse.Namespace) -> int:
    from edgevision.cli.render import out, print_json

    project = _project(args)
    if args.action == "list":
        regions = project.regions(args.image)
        if args.json:
            print_json([r.to_dict() for r in regions])
            return 0
        if project.type != "detection":
            out.print(f"project {project.name} is a {project.type} project; regions belong to detection projects")
            return 0
        for r in regions:
            out.print(f"{r.id}\t{r.image_id}\t{r.tag}\t{r.left:.4f} {r.top:.4f} {r.width:.4f} {r.height:.4f}")
        images = len({r.image_id for r in regions})
        per_tag: dict[str, int] = {}
        for r in regions:
            per_tag[r.tag] = per_tag.get(r.tag, 0) + 1
        detail = ", ".join(f"{tag} {n}" for tag, n in sorted(per_tag.items(), key=lambda kv: kv[0].lower()))
        out.print(f"{len(regions)} regions on {images} images" + (f" ({detail})" if detail else ""))
    elif args.action == "add":
        r = project.add_region(args.image_id, args.tag, args.left, args.top, args.width, args.height)
        if args.json:
            print_json(r.to_dict())
        else:
            out.print(f"added region {r.id} ({r.tag}) to image {r.image_id}")
    elif args.action == "remove":
        # Check every id first so a typo does not leave the list half-removed.
        regions = [project.get_region(i) for i in args.region_ids]
        for r in regions:
            project.remove_region(r.id)
        out.print(f"removed {len(regions)} regions")
    return 0


def _show_metrics(metrics: dict[str, Any], title: str) -> None:
    from edgevision.cli.render import confusion_table, metrics_notes, metrics_table, out

    out.print(metrics_table(metrics, title))
    for line in metrics_notes(metrics):
        out.print(line)
    cm = confusion_table(metrics)
    if cm is not None and len(metrics["tags"]) <= 12:
        out.print(cm)


def cmd_train(args: argparse.Namespace) -> int:
    from edgevision.cli.render import out, print_json, progress_bar

    project = _project(args)
    with progress_bar() as progress:
        iteration = project.train(args.mode, seed=args.seed, budget=args.budget, folds=args.folds, progress=progress,
                                  qat=args.qat, prune=args.prune, int8_ready=args.int8_ready)
    if args.json:
        print_json(iteration.summary())
        return 0
    info = iteration.info
    out.print(f"iteration {iteration.number} trained ({info['mode']}, {info['image_count']} images, "
              f"{info['duration_s']:.1f} s)")
    _show_metrics(iteration.metrics, f"{project.name} · iteration {iteration.number}")
    if info.get("note"):
        out.print(info["note"])
    if info.get("pruning"):
        pr = info["pruning"]
        out.print(f"pruned: {pr['sparsity']:.1%} of the backbone's conv weights are zero "
                  f"({pr['sparsity_all_weights']:.1%} of all weights); figures above are the pruned model's")
    if info.get("int8_ready"):
        ready = info["int8_ready"]
        out.print(f"int8-ready: weights on the int8 grid ({ready['grid']['layers']} conv layers), head fitted on int8 "
                  f"features too (int8 feature error {ready['int8_feature_error']:.1%}); next: edgevision export "
                  f"{project.name} --format tflite --flavor int8")
    if info.get("qat"):
        out.print(f"quantization-aware model stored ({info['qat']['model_file']}); next: edgevision export "
                  f"{project.name} --format tflite --flavor int8")
    out.print(f"next: edgevision predict {project.name} IMAGE   ·   edgevision evaluate {project.name} --threshold 0.7")
    return 0


def cmd_iterations(args: argparse.Namespace) -> int:
    from edgevision.cli.render import fmt, out, pct, print_json
    from edgevision.iteration import iterations_table
    from rich.table import Table

    rows = iterations_table(_project(args).iterations())
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        out.print(f"no iterations yet; run `edgevision train {args.name}`")
        return 0
    table = Table("#", "created", "mode", "domain", "images", "seconds", "precision", "recall", "mAP", "top-1")
    for r in rows:
        table.add_row(str(r["number"]), r["created"], r["mode"], r["domain"], str(r["images"]), fmt(r["duration_s"], 1),
                      pct(r["precision"]), pct(r["recall"]), pct(r["mean_average_precision"]), pct(r["accuracy"]))
    out.print(table)
    return 0


def cmd_iteration(args: argparse.Namespace) -> int:
    from edgevision.cli.render import out, print_json

    project = _project(args)
    if args.action == "delete":
        project.delete_iteration(args.number)
        out.print(f"deleted iteration {args.number}")
        return 0
    it = project.iteration(args.number)
    if args.json:
        print_json(it.summary())
        return 0
    for key in ("id", "created", "mode", "domain", "seed", "duration_s", "image_count", "labels", "hyperparameters",
                "kept", "regions_per_label", "detection"):
        if key in it.info:
            out.print(f"{key}: {it.info.get(key)}")
    _show_metrics(it.metrics, f"{project.name} · iteration {it.number}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from edgevision.cli.render import print_json
    from edgevision.errors import UsageError

    project = _project(args)
    it = project.iteration(args.iteration)
    fmt = args.format
    if it.is_detector and args.data and fmt is None and str(args.data).lower().endswith(".json"):
        fmt = "coco"
    if not it.is_detector and (fmt is not None or args.overlap != 0.3):
        raise UsageError("--format and --overlap apply to object detectors; this iteration is a classifier")
    kwargs = {"overlap": args.overlap, "format": fmt} if it.is_detector else {}
    metrics = it.evaluate(threshold=args.threshold, data=args.data, **kwargs).to_dict()
    if args.json:
        print_json({"project": project.name, "iteration": it.number, **metrics})
    else:
        _show_metrics(metrics, f"{project.name} · iteration {it.number}")
        _print_report_hint(project.name, it.number, args.threshold, args.overlap if it.is_detector else None,
                           held_out=bool(args.data))
    return 0


def _print_report_hint(name: str, number: int, threshold: float, overlap: float | None, *, held_out: bool) -> None:
    """Point to ``edgevision report`` with the same thresholds (the report covers the held-out images)."""
    from edgevision.cli.render import out

    flags = (f" --threshold {threshold:g}" if threshold != 0.5 else "") + \
            (f" --overlap {overlap:g}" if overlap is not None and overlap != 0.3 else "")
    out.print(f"report with curves and examples{' of the held-out images' if held_out else ''}: "
              f"edgevision report {name} --iteration {number}{flags}", soft_wrap=True)


def cmd_report(args: argparse.Namespace) -> int:
    from edgevision.cli.render import err, out, print_json
    from edgevision.detection_metrics import DEFAULT_OVERLAP
    from edgevision.errors import UsageError
    from edgevision.report import write_report

    project = _project(args)
    it = project.iteration(args.iteration)
    if not it.is_detector and args.overlap is not None:
        raise UsageError("--overlap applies to object detectors; this iteration is a classifier")
    path = write_report(it, out=args.out, threshold=args.threshold,
                        overlap=DEFAULT_OVERLAP if args.overlap is None else args.overlap)
    if args.json:
        print_json({"project": project.name, "iteration": it.number, "path": str(path)})
    else:
        out.print(str(path), soft_wrap=True)
    if args.open:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            err.print("no web browser could be started; open the file above yourself", soft_wrap=True)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from edgevision.cli.render import err, out, pct, print_json
    from edgevision.errors import ImageRejectedError
    from rich.text import Text
    from runtimes.preprocess import ImageDecodeError

    it = _project(args).iteration(args.iteration)
    results, failed = [], 0
    for path in args.images:
        try:
            results.append((path, it.predict(Path(path), threshold=args.threshold,
                                             max_detections=args.max_detections)[0]))
        except (ImageDecodeError, ImageRejectedError) as exc:
            failed += 1
            err.print(Text.assemble(("error: ", "red"), str(exc)))
    if args.json:
        print_json([r.to_dict() for _, r in results] if len(args.images) > 1 else (results[0][1].to_dict() if results else None))
    else:
        for path, r in results:
            if it.is_detector:
                shown = [p for p in r.predictions if p.probability >= max(args.threshold, 0.05)]
                out.print(f"{path}: {len(shown)} objects" + ("" if shown else " above threshold"))
                for p in shown[:20]:
                    b = p.bounding_box
                    out.print(f"  {p.tag_name} {pct(p.probability)} at left {b.left:.3f} top {b.top:.3f} "
                              f"width {b.width:.3f} height {b.height:.3f}")
                continue
            top = ", ".join(f"{p.tag_name} {pct(p.probability)}" for p in r.predictions[:5]) or "(nothing above threshold)"
            out.print(f"{path}: {top}")
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from edgevision.cli.render import out, print_json
    from edgevision.errors import UsageError

    if args.list:
        from exporters import list_exporters

        exporters = list_exporters()
        if args.json:
            print_json([{"format": e.name, "flavors": list(e.flavors), "default_flavor": e.default_flavor,
                         "tasks": list(e.tasks), "runs_on": e.runs_on, "description": e.description}
                        for e in exporters])
            return 0
        from rich.table import Table

        table = Table("format", "flavors (default first)", "tasks", "runs on")
        for e in exporters:
            flavors = [e.default_flavor] + [f for f in e.flavors if f != e.default_flavor]
            table.add_row(e.name, ", ".join(flavors), ", ".join(e.tasks), e.runs_on)
        out.print(table)
        return 0
    if not args.name or not args.format:
        raise UsageError("export needs a project name and --format (see `edgevision export --list`)")
    options: dict[str, str] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = value.strip()
    it = _project(args).iteration(args.iteration)
    from edgevision.cli.render import err

    # A spinner on a terminal (nothing otherwise): an int8 export calibrates and corrects for a minute or two.
    with err.status(f"exporting {args.name} iteration {it.number} to {args.format} and verifying it ..."):
        result = it.export(args.format, flavor=args.flavor, out=args.out, options=options, zip=args.zip)
    if args.json:
        print_json(result.to_dict())
        return 0
    v = result.verification
    m = result.manifest
    out.print(f"exported {args.name} iteration {it.number} → {m.exporter.name} ({m.exporter.options.get('flavor')}) "
              f"at {result.path} in {result.seconds:.1f} s", markup=False, soft_wrap=True)
    figures = {k: v.details[k] for k in ("images", "max_abs_diff", "mean_abs_diff", "top1_agreement",
                                         "top1_agreement_held_out", "accuracy_model", "accuracy_export",
                                         "boxes_matched", "mean_iou", "max_score_diff", "map50_model", "map50_export",
                                         "file_bytes")
               if k in v.details}
    text = ", ".join(f"{k} {val:.4g}" if isinstance(val, float) else f"{k} {val}" for k, val in figures.items())
    out.print(f"verification: {v.status}" + (f" ({v.reason})" if v.reason else "") + (f" — {text}" if text else ""),
              markup=False, soft_wrap=True)
    if result.zip_path:
        out.print(f"zip: {result.zip_path}", markup=False, soft_wrap=True)
    if m.model_file.endswith((".tflite", ".onnx", ".mlpackage", ".mlmodel")):
        out.print(f"try it: edgevision-run predict {result.path} IMAGE", markup=False, soft_wrap=True)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from edgevision.benchmark import benchmark_iteration
    from edgevision.cli.render import benchmark_notes, benchmark_table, err, out, print_json, print_wide, progress_bar

    it = _project(args).iteration(args.iteration)
    with progress_bar(not args.json) as progress:
        result = benchmark_iteration(it, formats=args.formats, flavors=args.flavors, min_metric=args.min_metric,
                                     progress=progress)
    data = result.to_dict()
    if args.json:
        print_json(data)
    else:
        print_wide(benchmark_table(data))
        for line in benchmark_notes(data):
            out.print(line, soft_wrap=True)
    below = result.below_min_metric
    if below:
        err.print(f"below --min-metric {args.min_metric:g} ({result.metric_name}): "
                  + ", ".join(f"{r.label} {r.metric:.3f}" for r in below), soft_wrap=True)
        return 1
    return 0


def cmd_domains(args: argparse.Namespace) -> int:
    from edgevision.cli.render import out, print_json
    from edgevision.domains import list_domains

    domains = list_domains()
    if args.json:
        print_json([d.to_dict() for d in domains])
        return 0
    rows = [("domain", "backbone", "input", "params", "float32", "weights")]
    missing = []
    for d in domains:
        info = d.to_dict()
        if not info["weights_installed"]:
            missing.append(info["install"])
        rows.append((d.name, info["backbone"], f"{info['input_size']} px", f"{info['params'] / 1e6:.2f} M",
                     f"{info['float32_mb']:.1f} MB", "yes" if info["weights_installed"] else "MISSING"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        out.print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), style="bold" if n == 0 else None,
                  markup=False, soft_wrap=True)
    for d in domains:
        out.print(f"{d.name}: {d.description}")
    for hint in dict.fromkeys(missing):
        out.print(f"to install missing weights: {hint}")
    out.print("landmarks/retail/food-compact are augmentation presets on general-compact's backbone, "
              "not separately pretrained models.")
    return 0


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def cmd_serve_api(args: argparse.Namespace) -> int:
    import signal
    import threading
    import webbrowser

    from edgevision.api.server import make_api_server, serve_api
    from edgevision.cli.render import err

    key = args.key if args.key is not None else os.environ.get(API_KEY_ENV) or None
    try:
        server = make_api_server(home=args.home, host=args.host, port=args.port, key=key)
    except OSError as exc:
        err.print(f"error: cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
                  "pick another --port or --host", markup=False, soft_wrap=True)
        return 1
    bound_host, bound_port = server.server_address[:2]
    # A wildcard address is not one a browser can open: show this machine's loopback instead.
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(str(bound_host), str(bound_host))
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{bound_port}/"
    if threading.current_thread() is threading.main_thread():
        # `kill` (SIGTERM) stops as cleanly as Ctrl-C: serve_api's clean-up runs, exit code 143. Installed
        # before the address is printed: a script may send the signal as soon as it reads that line.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        # A server started in the background by a script (`edgevision serve-api &`) inherits SIGINT
        # ignored, and Python then never raises KeyboardInterrupt: `kill -INT` (and the Ctrl-C this
        # command promises) would do nothing. Take SIGINT back explicitly.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # Printed and flushed at once: scripts (and the tests) wait for this line to know the port.
        print(f"training API and portal on {url} (home {server.app.home}); Ctrl-C stops", flush=True)
        if key:
            print("clients must send the key as the Training-Key header; the portal asks for it", flush=True)
        if args.command == "portal" and not args.no_browser:
            threading.Timer(0.3, webbrowser.open, args=(url,)).start()
        serve_api(server)
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
        return 130
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edgevision.cli.demo import run_demo

    return run_demo(args)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "project": cmd_project,
    "tag": cmd_tag,
    "images": cmd_images,
    "import": cmd_import,
    "export-data": cmd_export_data,
    "regions": cmd_regions,
    "train": cmd_train,
    "iterations": cmd_iterations,
    "iteration": cmd_iteration,
    "evaluate": cmd_evaluate,
    "report": cmd_report,
    "predict": cmd_predict,
    "export": cmd_export,
    "benchmark": cmd_benchmark,
    "domains": cmd_domains,
    "serve-api": cmd_serve_api,
    "portal": cmd_serve_api,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.home:
        os.environ[config.HOME_ENV] = args.home
    try:
        return HANDLERS[args.command](args)
    except EdgevisionError as exc:
        from edgevision.cli.render import err
        from rich.text import Text

        err.print(Text.assemble(("error: ", "red"), str(exc)))
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted: nothing half-done was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
