"""Command line: ``python -m bnprivacy {book,chapter,html,params,shadow,family,record,assignments,check-html} ...``."""

from __future__ import annotations

import argparse
import errno
import sys

import yaml

from . import book


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bnprivacy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def with_params(sub):
        sub.add_argument("--profile", default="quick", help="profile in book/profiles.yml (quick, full, smoke)")
        sub.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                         help="override a chapter parameter, e.g. -p dataset cifar10 (repeatable)")
        return sub

    run_book = with_params(commands.add_parser("book", help="execute every chapter, then build the HTML"))
    run_book.add_argument("--only", nargs="+", metavar="CHAPTER", help="execute only these chapters")
    run_chapter = with_params(commands.add_parser("chapter", help="execute one chapter"))
    run_chapter.add_argument("chapter", help="chapter name, e.g. 01_training")
    run_chapter.add_argument("--log", action="store_true", help="stream the notebook's output")
    commands.add_parser("html", help="build the HTML from the executed chapters")
    params = commands.add_parser("params", help="list a chapter's parameters and defaults")
    params.add_argument("chapter")
    classroom = commands.add_parser("assignments", help="write student and teacher notebooks of every chapter")
    classroom.add_argument("--out", default="_build/assignments", help="folder for student/ and teacher/")
    check = commands.add_parser("check-html", help="visit every page of the built book in headless Chromium")
    check.add_argument("--site", default="_build/html", help="the built HTML book")
    check.add_argument("--screenshots", default="_build/check-html", help="folder for one screenshot per page")
    shadow = commands.add_parser("shadow", help="train (a shard of) a shadow run into results/runs/")
    shadow.add_argument("n_models", type=int, help="models in the run (even for balanced masks)")
    shadow.add_argument("-c", "--config", nargs=2, action="append", metavar=("NAME", "VALUE"),
                        help="a Config field, e.g. -c dataset cifar10 -c arch resnet18 (repeatable)")
    shadow.add_argument("--shard", default="0/1", help="i/k: train only shard i of k (default 0/1, all)")
    shadow.add_argument("--chunk-size", type=int, default=16, help="models trained at once")
    shadow.add_argument("--mask", default="balanced", choices=["balanced", "fraction"])
    shadow.add_argument("--fraction", type=float, default=0.5, help="pool fraction per model with --mask fraction")
    shadow.add_argument("--mask-seed", type=int, default=0)
    fam = commands.add_parser("family", help="train (a shard of) the runs that chapters 01-04 share")
    fam.add_argument("--profile", default="quick", help="profile in book/profiles.yml (quick, full, smoke)")
    fam.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                     help="override a family parameter (those chapters 01-04 share), e.g. -p seeds 5 (repeatable)")
    fam.add_argument("--shard", default="0/1", help="i/k: train only shard i of k of every run (default: all)")
    fam.add_argument("--chunk-size", type=int, default=16, help="models trained at once")
    for sub in (shadow, fam):
        sub.add_argument("--executor", default="local",
                         help="local (this process, the default) or ray (one Ray task per missing chunk)")
        sub.add_argument("--address", default=None,
                         help="with --executor ray: the cluster, auto or HOST:PORT (default: a new local instance)")
        sub.add_argument("--cpus-per-task", type=int, default=None,
                         help="with --executor ray on CPUs: CPUs (and torch threads) per chunk task "
                              "(default: this process's torch threads, for results identical to a local run)")
        sub.add_argument("--max-retries", type=int, default=2,
                         help="with --executor ray: retries of a failing chunk task (default 2)")
    rec = commands.add_parser("record", help="execute chapters 01-04 and 06 once and write recorded/<name>/ (rows, curves, provenance)")
    rec.add_argument("--profile", default="quick", help="profile in book/profiles.yml")
    rec.add_argument("--name", required=True, help="folder name under recorded/, e.g. cifar10-airbench")
    rec.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                     help="override a parameter of the recorded chapters (repeatable)")
    rec.add_argument("--chapters", default=None,
                     help="comma-separated chapters to execute (default: 01-04 and 06), e.g. "
                          "01_training,02_canaries,03_gradient_influence,04_membership_inference")
    return parser


def family_values(root, profile: str, overrides: dict) -> dict:
    """The family parameters under ``profile`` with ``overrides``: the defaults of
    :class:`~bnprivacy.analysis.parameters.FamilyParameters` (the chapters' parameters cells
    restate them, checked by tests), then what ``profile`` sets for chapter 01, then ``overrides``."""
    from .analysis.parameters import FAMILY_PARAMETERS, defaults

    unknown = sorted(set(overrides) - set(FAMILY_PARAMETERS))
    if unknown:
        raise ValueError(f"{unknown} are not family parameters; allowed names: {', '.join(FAMILY_PARAMETERS)}")
    values = defaults()
    # Chapter 01's entry stands for all four chapters: the tests check that profiles give them the same values.
    chosen = book.profile_parameters(root, profile, "01_training")
    values.update({k: v for k, v in chosen.items() if k in FAMILY_PARAMETERS})
    values.update(overrides)
    return values


def _family(root, args) -> None:
    from .analysis.family_steps import protocol_from, train_family_shard

    p = protocol_from(family_values(root, args.profile, book.parse_overrides(args.param)))
    complete, total = train_family_shard(p, shard=args.shard, chunk_size=args.chunk_size, executor=args.executor,
                                         address=args.address, cpus_per_task=args.cpus_per_task,
                                         max_retries=args.max_retries)
    print(f"shard {args.shard}: {complete} of {total} runs of the family complete"
          + ("" if complete == total else " (other shards' models are still missing)"))


def _shadow(args) -> None:
    from .config import Config
    from .runs.shadow import shadow_run
    from .runs.spec import RunSpec, run_folder

    cfg = Config.from_dict(book.parse_overrides(args.config, flag="-c"))
    spec = RunSpec(cfg, args.n_models, args.mask, args.fraction, args.mask_seed)
    run = shadow_run(spec, chunk_size=args.chunk_size, shard=args.shard, executor=args.executor,
                     address=args.address, cpus_per_task=args.cpus_per_task, max_retries=args.max_retries)
    where = run_folder(spec)
    if run is None:
        print(f"shard {args.shard} finished; other shards' models are still missing in {where}")
    else:
        print(f"shadow run complete: {where}")
        print(run.final_accuracy().describe().loc[["mean", "std", "min", "max"]].to_string())


# What to do about a file-system error, by its errno: advice about permissions for a full disk
# sends a user looking in the wrong place.
_FOLDERS = ("the results folder (BNPRIVACY_RESULTS, default results/) or the data folder "
            "(BNPRIVACY_DATA, default data/)")
OS_ERROR_ADVICE = {
    errno.EACCES: f"You may not read or write that path: fix its permissions, or point {_FOLDERS} at a folder you can write",
    errno.EPERM: f"The operation is not permitted there: fix the path's permissions, or point {_FOLDERS} elsewhere",
    errno.EROFS: f"That file system is read-only: point {_FOLDERS} at a writable disk",
    errno.ENOSPC: f"The disk is full: free some space (finished runs are kept, so the same command resumes), or point {_FOLDERS} at another disk",
    errno.EDQUOT: f"Your disk quota is used up: free some space, or point {_FOLDERS} at another disk",
    errno.EEXIST: f"A file stands where a folder is to be made: move it away, or point {_FOLDERS} at a folder",
    errno.ENOTDIR: f"A part of that path is a file where a folder is expected: move the file away, or point {_FOLDERS} at a folder",
    errno.EISDIR: "That path is a folder where a file is expected: check the path",
    errno.ENAMETOOLONG: "That path is too long for the file system: use a shorter folder",
    errno.ELOOP: "That path goes through a loop of symbolic links: fix or remove the link",
    errno.EMFILE: "Too many files are open: raise the limit (ulimit -n) or close other programs",
    errno.EIO: "The disk reported an input/output error: check the disk before running again",
}


def os_error_advice(error: OSError) -> str:
    """What to do about ``error``, by its errno (a generic line for the others)."""
    return OS_ERROR_ADVICE.get(error.errno, "The file system refused an operation on that path; check it and run again")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        root = book.find_root()
        if args.command == "book":
            book.build_book(root, args.profile, args.only, book.parse_overrides(args.param))
        elif args.command == "chapter":
            book.execute_chapter(root, args.chapter, args.profile, book.parse_overrides(args.param),
                                 log_output=args.log)
        elif args.command == "html":
            book.build_html(root)
        elif args.command == "assignments":
            from .assignments import write_assignments

            written = write_assignments(root, book.chapter_names(root), root / args.out)
            for version, paths in written.items():
                print(f"{version}: {len(paths)} notebooks in {root / args.out / version}")
        elif args.command == "check-html":
            from .htmlcheck import check_site

            reports = check_site(root / args.site, root / args.screenshots)
            print(f"{len(reports)} pages checked in headless Chromium, no problems; "
                  f"screenshots in {root / args.screenshots}")
        elif args.command == "shadow":
            _shadow(args)
        elif args.command == "family":
            _family(root, args)
        elif args.command == "record":
            from .record import RECORDED_CHAPTERS, fit_report, parse_chapters, record

            chapters = parse_chapters(args.chapters) if args.chapters is not None else RECORDED_CHAPTERS
            folder = record(root, args.profile, args.name, book.parse_overrides(args.param), chapters)
            print(f"recorded {folder}")
            for line in fit_report(folder):
                print(f"  {line}")
        elif args.command == "params":
            for name, spec in book.chapter_parameters(root, args.chapter).items():
                print(f"{name:18} = {spec['default']:<24} # {spec['help']}")
    except (book.ChapterFailed, ValueError, FileNotFoundError, RuntimeError) as error:
        # ValueError covers assignments.AssignmentError, RuntimeError htmlcheck.HtmlCheckFailed.
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: {error}. {os_error_advice(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every chunk and chapter that had finished is kept; run the same command again "
              "to resume from them", file=sys.stderr)
        return 130
    except yaml.YAMLError as error:
        print(f"error: a YAML file could not be read ({error}); book/profiles.yml or _toc.yml is malformed",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
