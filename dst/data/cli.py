"""``dst-data``: download or generate data sets, and show where the loaders look for them."""

from __future__ import annotations

import argparse
import sys

from dst.data import cifar
from dst.data import lookup
from dst.data import mnist1d
from dst.data.datasets import DATASETS
from dst.data.datasets import locate
from dst.data.download import RESOURCES
from dst.data.download import download
from dst.data.errors import DataError

KINDS = {
    "fashion_mnist": "Fashion-MNIST, IDX files (also: apt-get install dataset-fashion-mnist)",
    "mnist": "MNIST, IDX files",
    "kmnist": "Kuzushiji-MNIST, IDX files",
    "cifar10": "CIFAR-10, python batches (cifar-10-python.tar.gz, 163 MB)",
    "cifar100": "CIFAR-100, python batches (cifar-100-python.tar.gz, 161 MB)",
    "mnist1d": "MNIST-1D, generated offline (dst-data generate mnist1d; also done on first load)",
    "image_folder": "your image files in train/<class>/ and val/<class>/ (e.g. ImageNet), streamed; "
                    "dataset.data_dir names the folder",
}
GENERATED = (mnist1d.NAME,)


def _parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<14} {KINDS[name]}" for name in DATASETS)
    parser = argparse.ArgumentParser(
        prog="dst-data", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Get the data sets dst trains on. The loaders never download; this command does, "
                    "into ~/.cache/dst/<name> unless --dir is given.",
        epilog=f"data sets:\n{listing}\n\nexamples:\n  dst-data download cifar10\n"
               f"  dst-data download mnist --dir /data/mnist\n  dst-data generate mnist1d\n  dst-data where cifar100")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    get = commands.add_parser("download", help=f"download and verify one of {', '.join(RESOURCES)}")
    get.add_argument("name", choices=tuple(RESOURCES), metavar="NAME", help=", ".join(RESOURCES))
    get.add_argument("--dir", help="target folder (default ~/.cache/dst/NAME); pass it as dataset.data_dir")
    get.add_argument("--force", action="store_true", help="download again even if the files are there")
    gen = commands.add_parser("generate", help="generate mnist1d offline and cache it")
    gen.add_argument("name", choices=GENERATED, metavar="NAME", help=", ".join(GENERATED))
    gen.add_argument("--dir", help="cache folder (default ~/.cache/dst/mnist1d, or $DST_DATA_DIR/mnist1d)")
    where = commands.add_parser("where", help="print where the loader looks for a data set, in order")
    where.add_argument("name", choices=DATASETS, metavar="NAME", help=", ".join(DATASETS))
    where.add_argument("--dir", help="a dataset.data_dir to check instead of the usual places")
    return parser


def _where(name: str, data_dir: str | None) -> int:
    places = [data_dir] if data_dir else lookup.candidate_dirs(name)
    inside = f" (and {cifar.LAYOUTS[name].folder}/ inside each)" if name in cifar.LAYOUTS else ""
    print(f"{name} is looked for in{inside}:")
    for place in places:
        print(f"  {place}")
    try:
        print(f"found: {locate(name, data_dir)}")
    except DataError as err:
        print(f"not found: {err}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "where":
            return _where(args.name, args.dir)
        if args.command == "generate":
            _, path = mnist1d.load(args.dir)
            print(f"{args.name}: {path}")
            return 0
        path = download(args.name, args.dir, force=args.force)
        print(f"{args.name}: {path}")
        hint = "" if args.dir is None else f" (pass dataset.data_dir={args.dir})"
        print(f"the loader finds it there{hint}")
        return 0
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
