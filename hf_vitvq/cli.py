"""The `hf-vitvq` command line.

hf-vitvq export-onnx MODEL DIR     # MODEL: a saved folder or Hub id; writes DIR/encoder.onnx and DIR/decoder.onnx
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import ViTVQModel


def export_onnx_command(args: argparse.Namespace) -> None:
    from .onnx_export import export_onnx

    model = ViTVQModel.from_pretrained(args.model)
    paths = export_onnx(model, args.output_dir, opset_version=args.opset)
    for name, path in paths.items():
        print(f"{name}: {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-vitvq", description="TiTok-style 1D image tokenizers (ViT-VQ).")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "export-onnx",
        help="Export the encoder (pixels -> token ids) and decoder (token ids -> pixels) to ONNX, dynamic batch.",
    )
    export.add_argument("model", help="A folder saved with save_pretrained, or a Hub model id.")
    export.add_argument("output_dir", help="Folder for encoder.onnx and decoder.onnx (created if missing).")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset version (default: 18).")
    export.set_defaults(handler=export_onnx_command)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
