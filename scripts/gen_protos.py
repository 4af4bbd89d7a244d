"""Regenerate the Python protobuf/gRPC code of protos/ into the SDK package.

    python scripts/gen_protos.py           # write client/modelwire/v1/*_pb2*.py(i)
    python scripts/gen_protos.py --check   # exit 1 if the committed code is stale

The generated modules import each other as ``modelwire.v1.*``, so they live in the
SDK's own ``modelwire/v1/``; the server imports them from there.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "client"
PACKAGE = Path("modelwire") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) for every .proto file; return the files written."""
    from grpc_tools import protoc

    protos = sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"  # well-known types
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    (out_root / PACKAGE).mkdir(parents=True, exist_ok=True)
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out_root / PACKAGE).iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def committed_files() -> list[Path]:
    target = OUT_ROOT / PACKAGE
    return sorted(p for p in target.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for p in generate(Path(tmp))}
        current = {p.name: p for p in committed_files()}
        stale = sorted(set(fresh) ^ set(current))
        stale += [
            n
            for n in sorted(set(fresh) & set(current))
            if not filecmp.cmp(fresh[n], current[n], shallow=False)
        ]
    if stale:
        print("generated code is stale; run: python scripts/gen_protos.py", file=sys.stderr)
        for name in stale:
            print(f"  {PACKAGE / name}", file=sys.stderr)
        return 1
    print("generated code is up to date")
    return 0


def write() -> int:
    for old in committed_files():
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            shutil.copyfile(path, OUT_ROOT / PACKAGE / path.name)
            print(f"wrote {PACKAGE / path.name}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    return check() if parser.parse_args().check else write()


if __name__ == "__main__":
    raise SystemExit(main())
