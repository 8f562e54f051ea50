"""Stable `.meta` files for every asset of the Unity package (`make unity-meta`).

Unity ignores any asset without a `.meta` in an immutable (git or registry)
package, and writes random GUIDs into a local one, which breaks script
references in scenes and prefabs between machines. So every file and folder of
`unity_client/` carries a committed `.meta` whose GUID is derived from the
package name and the asset's path (the same on every machine, unique per
asset); an existing `.meta` keeps its GUID.

    python tools/unity_meta.py            write the missing ones, drop orphans
    python tools/unity_meta.py --check    fail on missing, orphaned, duplicate or
                                          malformed ones (CI)

Folders ending in `~` (Samples~) are invisible to Unity's asset database, so
they get no `.meta` of their own; their contents do, because Unity copies them
into the project with their `.meta` files when a sample is imported.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "unity_client"
PACKAGE_NAME = "com.arbridge.client"

# Unity writes a space after these empty keys.
_TAIL = ("  externalObjects: {{}}\n  userData: \n  assetBundleName: \n"
         "  assetBundleVariant: \n")
_FOLDER = "fileFormatVersion: 2\nguid: {guid}\nfolderAsset: yes\nDefaultImporter:\n" + _TAIL
_SCRIPT = ("fileFormatVersion: 2\nguid: {guid}\nMonoImporter:\n  externalObjects: {{}}\n"
           "  serializedVersion: 2\n  defaultReferences: []\n  executionOrder: 0\n"
           "  icon: {{instanceID: 0}}\n  userData: \n  assetBundleName: \n"
           "  assetBundleVariant: \n")
_ASMDEF = "fileFormatVersion: 2\nguid: {guid}\nAssemblyDefinitionImporter:\n" + _TAIL
_MANIFEST = "fileFormatVersion: 2\nguid: {guid}\nPackageManifestImporter:\n" + _TAIL
_TEXT = "fileFormatVersion: 2\nguid: {guid}\nTextScriptImporter:\n" + _TAIL
_DEFAULT = "fileFormatVersion: 2\nguid: {guid}\nDefaultImporter:\n" + _TAIL
_GUID = re.compile(r"^guid: ([0-9a-f]{32})$", re.M)


def template(asset: Path) -> str:
    if asset.is_dir():
        return _FOLDER
    if asset.suffix == ".cs":
        return _SCRIPT
    if asset.suffix == ".asmdef":
        return _ASMDEF
    if asset.name == "package.json":
        return _MANIFEST
    if asset.suffix in (".md", ".txt", ".json", ".xml", ".bytes", ".html", ".yaml"):
        return _TEXT
    return _DEFAULT


def assets(package: Path) -> list[Path]:
    """Every file and folder Unity imports (or copies with a sample), sorted."""
    found = []
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package)
        if path.suffix == ".meta" or any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_dir() and path.name.endswith("~"):
            continue  # hidden from the asset database; its contents are assets
        found.append(path)
    return found


def guid_for(package: Path, asset: Path) -> str:
    rel = asset.relative_to(package).as_posix()
    return hashlib.md5(f"{PACKAGE_NAME}/{rel}".encode()).hexdigest()


def meta_of(asset: Path) -> Path:
    return asset.with_name(asset.name + ".meta")


def problems(package: Path) -> list[str]:
    wanted = {meta_of(a): a for a in assets(package)}
    out = []
    seen: dict[str, Path] = {}
    for meta in sorted(package.rglob("*.meta")):
        if meta not in wanted:
            out.append(f"orphaned: {meta.relative_to(package)} (no such asset)")
            continue
        text = meta.read_text()
        m = _GUID.search(text)
        if m is None:
            out.append(f"malformed: {meta.relative_to(package)} has no guid")
            continue
        if m.group(1) in seen:
            out.append(f"duplicate guid {m.group(1)}: {meta.relative_to(package)} and "
                       f"{seen[m.group(1)].relative_to(package)}")
        seen[m.group(1)] = meta
        expected = template(wanted[meta]).format(guid=m.group(1))
        if text != expected:
            importer = re.search(r"^(\w+Importer):$", expected, re.M).group(1)
            out.append(f"malformed: {meta.relative_to(package)} is not the {importer} "
                       "meta Unity writes for it")
    for meta, asset in wanted.items():
        if not meta.exists():
            out.append(f"missing: {meta.relative_to(package)} for {asset.relative_to(package)}")
    return out


def write(package: Path) -> int:
    written = 0
    wanted = {meta_of(a): a for a in assets(package)}
    for meta in package.rglob("*.meta"):
        if meta not in wanted:
            meta.unlink()
    for meta, asset in wanted.items():
        m = _GUID.search(meta.read_text()) if meta.exists() else None
        guid = m.group(1) if m else guid_for(package, asset)
        text = template(asset).format(guid=guid)
        if not meta.exists() or meta.read_text() != text:
            meta.write_text(text)
            written += 1
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--package", type=Path, default=PACKAGE)
    args = parser.parse_args()
    if args.check:
        found = problems(args.package)
        for line in found:
            print(line, file=sys.stderr)
        if found:
            print("run `make unity-meta`", file=sys.stderr)
        return 1 if found else 0
    print(f"{write(args.package)} .meta file(s) written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
