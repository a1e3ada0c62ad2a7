"""OpenSeadragon, the page's deep-zoom viewer: a pinned release from the npm registry, never committed.

``make viewer-assets`` (run by ``make setup`` and ``make test``) calls ``python -m histokd.viewer.assets``,
which runs ``npm pack openseadragon@<VERSION>``, checks the tarball against the registry's pinned sha512
(:data:`INTEGRITY`) and extracts ``build/openseadragon/`` and the licence into
``src/histokd/viewer/static/vendor/openseadragon/`` (git-ignored). ``histokd view`` only reads that folder
(or the same layout under ``<cache>/viewer/openseadragon-<VERSION>/``, written by ``python -m
histokd.viewer.assets --cache`` where the package folder is not writable); nothing is fetched at run time.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from histokd.errors import InputError, one_line
from histokd.workspace import clean_stale_temps, temp_prefix

VERSION = "6.1.1"
#: ``npm view openseadragon@6.1.1 dist.integrity``
INTEGRITY = "sha512-g4iKe2q8B642SaBT3+x4ZF3/8b1TxPPydyjmtrOLgDrlYWMKd9ZXM+1Cb/xa9DVySkvs/7l6HR1nHKfD5F3Tsw=="
PACKAGE_DIR = Path(__file__).resolve().parent / "static" / "vendor" / "openseadragon"
HOW_TO_GET = ("run `make viewer-assets` in the histokd source tree (or `python -m histokd.viewer.assets`, "
              "`--cache` for an installed histokd; needs npm and the npm registry)")


def _cache_dir() -> Path:
    from histokd.features.runtime import cache_dir

    return cache_dir() / "viewer" / f"openseadragon-{VERSION}"


def _complete(folder: Path) -> bool:
    return (folder / "openseadragon.min.js").is_file() and (folder / "LICENSE.txt").is_file() \
        and (folder / "VERSION").is_file() and (folder / "VERSION").read_text().strip() == VERSION


def find_assets() -> Path | None:
    """The folder holding ``openseadragon.min.js``, ``images/`` and ``LICENSE.txt`` of :data:`VERSION`, or None."""
    for folder in (PACKAGE_DIR, _cache_dir()):
        if _complete(folder):
            return folder
    return None


def require_assets() -> Path:
    """:func:`find_assets`, or a one-line :class:`InputError` saying how to get them."""
    folder = find_assets()
    if folder is None:
        raise InputError(f"{PACKAGE_DIR}: OpenSeadragon {VERSION} (the viewer's page script) is not installed; "
                         f"{HOW_TO_GET}")
    return folder


def extract(tarball: bytes, dest: Path) -> Path:
    """Check ``tarball`` (the npm package) against :data:`INTEGRITY` and extract the minified build, its button
    images and its licence
    into ``dest`` (replaced whole; written beside it first, so a failure leaves the old folder)."""
    algo, _, want = INTEGRITY.partition("-")
    got = base64.b64encode(hashlib.new(algo, tarball).digest()).decode()
    if got != want:
        raise InputError(f"openseadragon-{VERSION}.tgz: checksum {algo}-{got[:16]}... is not the pinned "
                         f"{INTEGRITY[:24]}...; the download is damaged or not the pinned release: run it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(dest.parent)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(dest.name), suffix=".tmp", dir=dest.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tf:
            for m in tf.getmembers():
                name = m.name
                if not m.isfile() or ".." in Path(name).parts:
                    continue
                if name == "package/LICENSE.txt":
                    rel = Path("LICENSE.txt")
                elif name.startswith("package/build/openseadragon/") and not name.endswith((".map", "/openseadragon.js")):
                    rel = Path(name[len("package/build/openseadragon/"):])
                else:
                    continue
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                assert src is not None
                out.write_bytes(src.read())
        (tmp / "VERSION").write_text(VERSION + "\n")
        if not _complete(tmp):
            raise InputError(f"openseadragon-{VERSION}.tgz: no build/openseadragon/openseadragon.min.js or LICENSE.txt "
                             f"in the package; pin another version in {__file__}")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fetch(dest: Path = PACKAGE_DIR, npm: str = "npm") -> Path:
    """``npm pack openseadragon@VERSION`` into a temporary folder, then :func:`extract` into ``dest``."""
    exe = shutil.which(npm)
    if exe is None:
        raise InputError(f"{npm}: not found on PATH; install Node.js / npm (Debian: apt-get install npm) to fetch "
                         f"OpenSeadragon {VERSION} for `histokd view`")
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([exe, "pack", f"openseadragon@{VERSION}", "--pack-destination", tmp, "--silent"],
                             capture_output=True, text=True, timeout=600, cwd=tmp, check=False)
        tgz = Path(tmp) / f"openseadragon-{VERSION}.tgz"
        if res.returncode != 0 or not tgz.is_file():
            raise InputError(f"npm pack openseadragon@{VERSION} failed (exit {res.returncode}: "
                             f"{one_line(res.stderr or res.stdout, 200)}); check that the npm registry is reachable")
        return extract(tgz.read_bytes(), dest)


def main(argv: list[str] | None = None) -> int:
    """``python -m histokd.viewer.assets [--if-missing] [--cache]``: fetch OpenSeadragon into the package folder
    (``--cache``: into ``<cache>/viewer/openseadragon-<VERSION>/``, for an installed histokd whose package folder
    is not writable)."""
    args = sys.argv[1:] if argv is None else argv
    dest = _cache_dir() if "--cache" in args else PACKAGE_DIR
    if "--if-missing" in args and _complete(dest):
        print(f"OpenSeadragon {VERSION}: {dest} (present)")
        return 0
    try:
        out = fetch(dest)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"OpenSeadragon {VERSION}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
