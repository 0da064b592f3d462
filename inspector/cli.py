"""The ``inspector`` command line: train, evaluate, classify, manage models, make demo data."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inspector.errors import InspectorError
from inspector.settings import Settings

if TYPE_CHECKING:
    from inspector.store import ModelStore

log = logging.getLogger("inspector.cli")


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number of at least 0."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _store(settings: Settings) -> ModelStore:
    # Imported here: torch loads only for the commands that need a model.
    from inspector.store import ModelStore

    return ModelStore(settings.model_store_dir)


# -- commands ----------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from inspector.preprocessing import parse_scales
    from inspector.training import TrainConfig, continued_choices, fit

    store = _store(settings)
    # Options left out take the parent's choice when --init continues from a stored version,
    # else TrainConfig's default.
    given = {
        "arch": args.arch,
        "width": args.width,
        "pool": args.pool,
        "stride": args.stride,
        "padding": args.padding,
        "members": args.members,
        "folds": args.folds,
        "normalise": args.normalise,
        "flips": args.flips,
        "scales": parse_scales(args.scales) if args.scales else None,
        "good_classes": tuple(args.good_classes.split(",")) if args.good_classes else None,
    }
    choices = continued_choices(store, args.init) | {
        k: v for k, v in given.items() if v is not None
    }
    if args.folds is not None and args.members is None:
        choices["members"] = 1  # a fold set's size is its folds, whatever the parent's was
    config = TrainConfig(
        **choices,
        epochs=args.epochs,
        batch_size=args.batch_size or settings.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        schedule=args.schedule,
        init=args.init,
        freeze_blocks=args.freeze_blocks,
        balance=not args.no_balance,
        good_per_epoch=args.good_per_epoch,
        focal_gamma=args.focal_gamma,
        patience=args.patience,
        validate_every=args.validate_every,
        seed=args.seed,
        val_fraction=args.val_fraction,
        device=args.device or settings.device,
        amp=not args.no_amp,
        workers=args.workers,
        target_recall=args.target_recall,
        masks=str(args.masks) if args.masks else None,
        mask_weight=args.mask_weight,
        crop=args.crop,
        crop_epochs=args.crop_epochs,
        early_scales=parse_scales(args.early_scales) if args.early_scales else None,
        early_epochs=args.early_epochs,
        average_epochs=args.average_epochs,
        max_image_pixels=settings.max_image_pixels,
        progress=not args.quiet,
    )
    checkpoint = settings.data_dir / "runs" / args.name / "checkpoint.pt"
    mv = fit(
        args.data_dir,
        name=args.name,
        store=store,
        config=config,
        val_dir=args.val,
        weights_dir=settings.weights_dir,
        checkpoint_path=checkpoint,
        resume=args.resume,
        promote=True if args.promote else None,
    )
    metrics = mv.metadata.metrics
    print(f"registered {mv.ref} in {mv.path}")
    print(
        f"validation: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
        f"defect recall {metrics['defect_recall']}, false rejects {metrics['false_reject_rate']}, "
        f"ECE {metrics['ece']:.4f}; trained in {mv.metadata.training['seconds']:.0f}s"
    )
    where = "the validation folder" if args.val else "the hold-out"
    _print_recall_evidence(metrics, mv.metadata.calibration.target_recall, where)
    if metrics.get("hardest"):
        # The hold-out's weakest defect sets the threshold: the images to look at first, and
        # where more labelled ones (`inspector calibrate`) would move it.
        _print_hardest(metrics["hardest"], mv.metadata.calibration.defect_threshold, shown=3)
    return 0


def _print_recall_evidence(
    metrics: Mapping[str, Any], target: float, where: str, *, hint: bool = True
) -> None:
    """How far the labelled defects vouch for the recall: a few dozen cannot show 99%."""
    from inspector.evaluation import RECALL_CONFIDENCE, defects_to_show

    lower = metrics.get("defect_recall_lower_95")
    if lower is None or metrics.get("defect_recall") is None:
        return
    defects = sum(
        row["support"]
        for cls, row in metrics["per_class"].items()
        if cls in metrics["defect_classes"]
    )
    line = (
        f"  recall {metrics['defect_recall']:.1%} on the {defects} defects of {where}: at least "
        f"{lower:.1%} with {RECALL_CONFIDENCE:.0%} confidence"
    )
    if lower < target < 1.0:
        line += f"; showing {target:.0%} takes {defects_to_show(target)} defects with none missed"
        if hint:
            line += " (`inspector calibrate` refits on more labelled images)"
    print(line)


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from inspector.errors import ConfigurationError
    from inspector.inference import Classifier
    from inspector.reports import evaluate_folder, write_evaluation

    if args.output is not None and args.output.exists() and not args.output.is_dir():
        raise ConfigurationError(f"--output {args.output} is a file: give a folder for the report")
    classifier = Classifier.from_store(
        _store(settings),
        args.model,
        device=args.device or settings.device,
        batch_size=settings.batch_size,
    )
    report, figures = evaluate_folder(
        classifier,
        args.data_dir,
        max_pixels=settings.max_image_pixels,
        workers=settings.decode_workers,
    )
    meta = classifier.meta
    out = args.output or settings.data_dir / "reports" / f"{meta.name}-v{meta.version}"
    paths = write_evaluation(Path(out), report, figures)
    print(f"{meta.ref} on {report['num_images']} images of {args.data_dir}:")
    for key in (
        "accuracy",
        "macro_f1",
        "defect_recall",
        "defect_recall_lower_95",
        "false_reject_rate",
        "flagged_good_rate",
        "ece",
        "defect_auc",
    ):
        value = report[key]
        print(f"  {key:22s} {'n/a' if value is None else f'{value:.4f}'}")
    if report["false_rejects_at_recall"]:
        # What another threshold would do on this set: good parts flagged at each recall.
        curve = ", ".join(
            f"{float(r):.0%} -> {v:.1%}" for r, v in report["false_rejects_at_recall"].items()
        )
        print(f"  {'good flagged at recall':22s} {curve}")
    _print_recall_evidence(report, meta.calibration.target_recall, str(args.data_dir))
    for cls, row in report["per_class"].items():
        print(
            f"  {cls:22s} P {row['precision']:.3f} R {row['recall']:.3f} "
            f"F1 {row['f1']:.3f} (n={row['support']})"
        )
    _print_hardest(report["hardest"], report["calibration"]["defect_threshold"])
    print(f"report: {paths['report']}")
    return 0


def cmd_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    from inspector.recalibration import recalibrate

    mv = recalibrate(
        _store(settings),
        args.model,
        args.data_dir,
        target_recall=args.target_recall,
        max_review_rate=args.max_review_rate,
        device=args.device or settings.device,
        batch_size=settings.batch_size,
        max_pixels=settings.max_image_pixels,
        workers=settings.decode_workers,
        promote=args.promote,
    )
    metrics = mv.metadata.metrics
    before = metrics["previous"]
    print(
        f"registered {mv.ref}: the weights of {mv.metadata.parent}, calibrated on "
        f"{metrics['num_images']} images of {args.data_dir}"
    )
    print(f"  {'':22s} {before['model']:>14s} {mv.ref:>14s}")
    rows = (
        (
            "defect threshold",
            before["calibration"]["defect_threshold"],
            mv.metadata.calibration.defect_threshold,
        ),
        (
            "review threshold",
            before["calibration"]["review_threshold"],
            mv.metadata.calibration.review_threshold,
        ),
        ("temperature", before["calibration"]["temperature"], mv.metadata.calibration.temperature),
        ("defect recall", before["defect_recall"], metrics["defect_recall"]),
        ("good rejected", before["false_reject_rate"], metrics["false_reject_rate"]),
        ("good flagged", before["flagged_good_rate"], metrics["flagged_good_rate"]),
    )
    for label, old, new in rows:
        shown = ["n/a" if v is None else f"{v:.4f}" for v in (old, new)]
        print(f"  {label:22s} {shown[0]:>14s} {shown[1]:>14s}")
    print("  (both measured on these images; the new thresholds were fitted on them)")
    _print_recall_evidence(
        metrics, mv.metadata.calibration.target_recall, str(args.data_dir), hint=False
    )
    _print_hardest(metrics["hardest"], mv.metadata.calibration.defect_threshold)
    if not args.promote:
        print(f"not in production: inspector models promote {mv.ref}")
    return 0


def _print_hardest(
    hardest: dict[str, list[dict[str, Any]]], threshold: float, shown: int = 5
) -> None:
    """The first images to look at: the weakest defects, the strongest good parts, mix-ups."""
    titles = {
        "defects": f"lowest-scored defects (defect threshold {threshold:.3f})",
        "good": "highest-scored good parts",
        "wrong_class": "given the wrong class",
    }
    for key, title in titles.items():
        if not hardest[key]:
            continue
        print(f"  {title}:")
        for row in hardest[key][:shown]:
            mark = "flagged" if row["flagged"] else "passed"
            print(
                f"    {row['defect_score']:.3f}  {row['image']}  "
                f"predicted {row['predicted']} ({row['class_probability']:.3f} on "
                f"{row['class']}), {mark}"
            )


def cmd_classify(args: argparse.Namespace, settings: Settings) -> int:
    from inspector.classify import ResultWriter, classify_paths
    from inspector.inference import Classifier

    classifier = Classifier.from_store(
        _store(settings),
        args.model,
        device=args.device or settings.device,
        batch_size=args.batch_size or settings.batch_size,
    )
    meta = classifier.meta
    # A path that is not there is most likely a typo: it still gets its error row, but the
    # exit status says so (2), as a batch of bad images alone does not.
    missing = [str(p) for p in args.paths if not os.path.exists(p)]
    with ResultWriter(args.output, meta.classes, meta.preprocessing.scales) as writer:
        summary = classify_paths(
            classifier,
            args.paths,
            writer,
            max_pixels=settings.max_image_pixels,
            workers=settings.decode_workers,
            tiles=not args.no_tiles,
        )
    if not summary.total:
        print(f"no images found in {', '.join(map(str, args.paths))}", file=sys.stderr)
    print(
        f"{summary.total} image(s) with {meta.ref}: {summary.classified} classified, "
        f"{summary.errors} error(s), {summary.defects} defect(s), {summary.flagged} flagged "
        f"in {summary.seconds:.1f}s ({summary.images_per_second:.1f} img/s) -> {args.output}"
    )
    if missing:
        print(f"not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    return 0 if summary.total else 1


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from inspector.store import ModelRef

    store = _store(settings)
    if args.action == "list":
        names = store.names()
        if not names:
            print(f"no models in {store.root}")
        for name in names:
            prod = store.production(name)
            for version in store.versions(name):
                try:
                    meta = store.get(ModelRef(name, version)).metadata
                except InspectorError as exc:  # one damaged version does not hide the others
                    print(f"! {name}:{version}  cannot be read: {exc}")
                    continue
                acc = meta.metrics.get("accuracy")
                mark = "*" if version == prod else " "
                print(
                    f"{mark} {name}:{version}  {meta.spec.arch} w{meta.spec.width:g}"
                    f"{f' x{meta.spec.members}' if meta.spec.members > 1 else ''}  "
                    f"{len(meta.classes)} classes  acc {acc if acc is not None else '-'}  "
                    f"{meta.created_at}"
                )
        return 0
    if args.action == "show":
        mv = store.get(args.ref)
        data = mv.metadata.to_dict()
        data["path"] = str(mv.path)
        data["production"] = store.production(mv.metadata.name) == mv.metadata.version
        print(json.dumps(data, indent=2))
        return 0
    if args.action == "promote":
        mv = store.promote(args.ref)
        print(f"{mv.ref} is now in production")
        return 0
    if args.action == "rollback":
        mv = store.rollback(args.ref)
        print(f"rolled back: {mv.ref} is in production again")
        return 0
    if args.action == "export":
        from inspector.export import export_model

        path, mv = export_model(
            store, args.ref, args.format, args.output, folder=settings.data_dir / "exports"
        )
        print(f"exported {mv.ref} as {args.format} to {path}")
        return 0
    raise AssertionError(args.action)


def cmd_demo_data(args: argparse.Namespace, settings: Settings) -> int:
    from inspector.demo_data import generate_demo_dataset

    ds = generate_demo_dataset(
        args.out_dir,
        per_class=args.per_class,
        size=args.size,
        seed=args.seed,
        val_fraction=args.val_fraction,
    )
    total = sum(ds.counts.values())
    print(
        f"wrote {total} images of {len(ds.classes)} classes ({', '.join(ds.classes)}) to {ds.root}"
    )
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """First run on a new machine: demo data, a compact demo model, and a classified batch."""
    from inspector.classify import ResultWriter, classify_paths
    from inspector.demo import DEMO_MODEL, ensure_demo_data, train_demo_model
    from inspector.inference import Classifier

    store = _store(settings)
    demo_dir = ensure_demo_data(settings)
    if not store.versions(DEMO_MODEL):
        print("training the compact demo model (a few minutes on a CPU)...")
        train_demo_model(settings, store)
    classifier = Classifier.from_store(store, DEMO_MODEL, device=settings.device)
    output = settings.data_dir / "demo-results.csv"
    meta = classifier.meta
    with ResultWriter(output, meta.classes, meta.preprocessing.scales) as writer:
        summary = classify_paths(
            classifier, [demo_dir / "val"], writer, max_pixels=settings.max_image_pixels
        )
    print(
        f"{meta.ref}: classified {summary.total} demo images, {summary.defects} defects, "
        f"{summary.flagged} flagged, {summary.errors} errors -> {output}"
    )
    print(f"metrics: {json.dumps({k: meta.metrics.get(k) for k in ('accuracy', 'macro_f1')})}")
    return 0


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from inspector.db.engine import check_revision, make_engine, upgrade

    engine = make_engine(settings.database_url)
    try:
        if args.action == "upgrade":
            upgrade(engine)
        revision = check_revision(engine)
    finally:
        engine.dispose()
    print(f"database {engine.url.render_as_string(hide_password=True)} at revision {revision}")
    return 0


def cmd_tokens(args: argparse.Namespace, settings: Settings) -> int:
    from inspector.db.engine import check_revision, make_engine
    from inspector.db.queries import create_token, revoke_token

    engine = make_engine(settings.database_url)
    try:
        check_revision(engine)
        if args.action == "create":
            token = create_token(engine, args.name)
            print(f"API token {args.name!r} (shown once; keep it secret):")
            print(token)
            return 0
        if not revoke_token(engine, args.name):
            print(f"error: no active token named {args.name!r}", file=sys.stderr)
            return 2
        print(f"revoked token {args.name!r}")
        return 0
    finally:
        engine.dispose()


# -- parser ------------------------------------------------------------------------------------
# Adds subcommands to the parser: how the service commands join the core ones (service.cli).
ParserExtension = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def build_parser(extensions: Sequence[ParserExtension] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inspector", description="Industrial defect inspection with a multi-scale VGG."
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default: WARNING",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a classifier and register it as a new version")
    p.add_argument("data_dir", type=Path, help="folder with one sub-folder of images per class")
    p.add_argument("--val", type=Path, help="validation folder (default: a stratified hold-out)")
    p.add_argument("--name", required=True, help="model name in the store")
    p.add_argument("--arch", help="vgg11|13|16|19, each also _bn (default: vgg16_bn)")
    p.add_argument("--width", type=float, help="conv width multiplier, compact < 1 (default: 1)")
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--schedule", choices=["cosine", "onecycle"], default="cosine")
    p.add_argument(
        "--init",
        default="auto",
        help="imagenet, scratch, NAME[:VERSION] from the store, or auto "
        "(imagenet at full width, scratch for compact models). Continuing from a stored "
        "version keeps its arch, width, pool, scales, normalisation, flips and good classes "
        "unless given here",
    )
    p.add_argument(
        "--pool",
        choices=["avg", "max"],
        help="global pooling of the head: avg (default) or max (small defects)",
    )
    p.add_argument(
        "--stride",
        type=int,
        choices=[16, 32],
        help="output stride of the features: 32 (torchvision's VGG, default) or 16 (without "
        "its last max-pool: activation maps and mask supervision at twice the resolution)",
    )
    p.add_argument(
        "--padding",
        choices=["zeros", "reflect", "replicate"],
        help="what the convolutions see beyond the image's edge: zeros (torchvision's, "
        "default), or the image mirrored or its edge repeated (defects at the frame's border)",
    )
    p.add_argument(
        "--normalise",
        choices=["image", "fixed", "local"],
        help="image: each image by its own mean and std, so lighting is not a cue (default); "
        "fixed: the ImageNet mean and std; local: each pixel by the mean and std of the square "
        "around it (a quarter of the short side), for dark corners and uneven lighting",
    )
    p.add_argument(
        "--flips",
        action=argparse.BooleanOptionalAction,
        help="classify each image also flipped three ways and average (4x the inference work; "
        "finds more defects at the same false-alarm rate); stored with the model",
    )
    p.add_argument(
        "--masks",
        type=Path,
        help="folder of defect masks, MASKS/<class>/<name>.png (white = defect): teaches the "
        "network where defects are; good parts need none",
    )
    p.add_argument(
        "--mask-weight", type=float, default=1.0, help="weight of the mask loss (default 1)"
    )
    p.add_argument(
        "--crop",
        type=int,
        help="train on square crops of this many pixels of the scaled images, labelled by the "
        "masks (needs --masks; at most the smallest scale): small defects fill more of what "
        "the network sees, and each step costs less; served on whole images as before",
    )
    p.add_argument(
        "--crop-epochs",
        type=int,
        help="with --crop: train this many epochs on crops, the rest on whole images "
        "(default: every epoch on crops)",
    )
    p.add_argument(
        "--average-epochs",
        type=float,
        default=0.0,
        help="validate and keep a moving average of the weights spanning about this many "
        "epochs: steadier than the last step's weights for small networks trained from scratch "
        "(default 0: off)",
    )
    p.add_argument(
        "--members",
        type=int,
        help="train this many networks (seeds SEED, SEED+1, ...) on the same split and serve "
        "them as one version, their probabilities averaged and calibrated together: fewer "
        "good parts flagged for the same recall, at that many times the training and "
        "inference time (default: 1, or the --init version's count)",
    )
    p.add_argument(
        "--folds",
        type=int,
        help="cut DATA_DIR into this many stratified folds and train one network per fold, "
        "each holding its fold out; served as one set, and calibrated on every image, out of "
        "fold: the threshold rests on all your labelled defects, not a fifth of them "
        "(instead of --val and --val-fraction; default: 1, one hold-out, or the --init version's)",
    )
    p.add_argument(
        "--freeze-blocks", type=non_negative_int, default=0, help="freeze the first N conv blocks"
    )
    p.add_argument("--scales", help="short-side sizes, comma-separated (default: 224,256,288)")
    p.add_argument(
        "--early-scales",
        help="with --early-epochs: the first epochs jitter over these smaller sizes "
        "(comma-separated), the rest over --scales: cheaper early epochs (progressive resizing)",
    )
    p.add_argument(
        "--early-epochs",
        type=non_negative_int,
        default=0,
        help="epochs at --early-scales before the rest of the run goes on at --scales",
    )
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--patience", type=non_negative_int, default=8, help="early-stopping patience in epochs"
    )
    p.add_argument(
        "--validate-every",
        type=positive_int,
        default=1,
        help="in the first half of the run, before early stopping can begin, validate only "
        "every N epochs (every epoch after): less time on small models (default 1)",
    )
    p.add_argument("--good-classes", help="comma-separated classes that are not defects")
    p.add_argument("--target-recall", type=float, default=0.99, help="defect recall to reach")
    p.add_argument("--no-balance", action="store_true", help="no class-weighted loss")
    p.add_argument(
        "--focal-gamma",
        type=float,
        default=0.0,
        help="focal loss on the image labels: hard images carry the gradient (default 0: "
        "cross-entropy)",
    )
    p.add_argument(
        "--good-per-epoch",
        type=float,
        default=1.0,
        help="share of the good images each epoch trains on, drawn afresh every epoch (defect "
        "images train every epoch): shorter epochs where good parts are most of the data "
        "(default 1: all)",
    )
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--no-amp",
        action="store_true",
        help="full precision (default: mixed on CUDA and on CPUs with native bfloat16)",
    )
    p.add_argument("--workers", type=non_negative_int, help="data-loading processes")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.add_argument("--promote", action="store_true", help="put the new version in production")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="measure a model on labelled images it has not seen")
    p.add_argument("data_dir", type=Path)
    p.add_argument("--model", required=True, help="NAME[:VERSION] (default version: production)")
    p.add_argument("--output", type=Path, help="report folder (default: DATA/reports/NAME-vN)")
    p.add_argument("--device")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "calibrate",
        help="refit a version's temperature, defect threshold and review band on labelled "
        "images, as a new version with the same weights",
    )
    p.add_argument("data_dir", type=Path, help="folder per class, defect and good images")
    p.add_argument("--model", required=True, help="NAME[:VERSION] (default version: production)")
    p.add_argument("--target-recall", type=float, help="default: the version's own")
    p.add_argument("--max-review-rate", type=float, help="default: the version's own")
    p.add_argument("--promote", action="store_true", help="put the new version in production")
    p.add_argument("--device")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "classify",
        help="classify image files and folders offline",
        description="Classify image files and folders offline: one row per image, a bad image "
        "a row with its error. Exit status 0, or 2 when a named path is not there, 1 when no "
        "images were found.",
    )
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--model", required=True)
    p.add_argument(
        "--output",
        type=Path,
        required=True,
        help="results .csv, .jsonl (JSON lines) or .json (one array)",
    )
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--no-tiles", action="store_true", help="never classify large images by tiles")
    p.add_argument("--device")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("models", help="list, show, promote, roll back and export models")
    msub = p.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="every version; * marks production")
    q = msub.add_parser("show", help="metadata and metrics of NAME[:VERSION]")
    q.add_argument("ref")
    q = msub.add_parser("promote", help="put NAME:VERSION in production")
    q.add_argument("ref")
    q = msub.add_parser("rollback", help="return NAME to its previous production version")
    q.add_argument("ref", metavar="name")
    q = msub.add_parser("export", help="write NAME[:VERSION] as ONNX or TorchScript")
    q.add_argument("ref")
    q.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    q.add_argument(
        "--output", type=Path, help="file to write (default: DATA/exports/NAME-vN.onnx or .pt)"
    )
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("db", help="create or migrate the database (INSPECTOR_DATABASE_URL)")
    p.add_argument("action", choices=["upgrade", "check"])
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("tokens", help="create or revoke an API token")
    p.add_argument("action", choices=["create", "revoke"])
    p.add_argument("name")
    p.set_defaults(func=cmd_tokens)

    p = sub.add_parser("demo-data", help="generate a synthetic folder-per-class dataset")
    p.add_argument("out_dir", type=Path, help="folder to write OUT_DIR/<class>/*.png into")
    p.add_argument("--per-class", type=positive_int, default=60, help="images per class (60)")
    p.add_argument("--size", type=positive_int, default=128, help="image side in pixels (128)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="default: 0")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="share of each class written to OUT_DIR/val instead, the rest to OUT_DIR/train "
        "(default 0: one folder)",
    )
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("demo", help="demo data, a demo model and a classified batch")
    p.set_defaults(func=cmd_demo)
    for extend in extensions:
        extend(sub)
    return parser


def main(argv: Sequence[str] | None = None, extensions: Sequence[ParserExtension] = ()) -> int:
    parser = build_parser(extensions)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = Settings.from_env()
        return int(args.func(args, settings))
    except InspectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`inspector models list | head`): nothing more to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        # A path the command was given cannot be read or written: say which and why.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
