"""``histokd doctor``: versions, slide readers, encoders and their weights, devices."""

from __future__ import annotations

import importlib
import platform

import typer

from histokd.cli._common import run_command


def register(app: typer.Typer) -> None:
    @app.command()
    @run_command
    def doctor() -> None:
        """Print versions, available slide readers, encoders (and whether weights are present), devices."""
        import histokd

        rows: list[tuple[str, str]] = [("histokd", histokd.__version__), ("python", platform.python_version())]
        for mod in ["torch", "numpy", "h5py", "tifffile", "lightning_fabric", "sklearn", "skimage", "ray", "timm"]:
            rows.append((mod, _version(mod)))
        rows.append(("reader openslide", _openslide()))
        rows.append(("reader tiffslide", _version("tiffslide")))
        try:
            from histokd.features.encoders import encoder_status

            for name, status in encoder_status():
                rows.append((f"encoder {name}", status))
        except ModuleNotFoundError:
            rows.append(("encoders", "registry not installed"))
        rows.extend(_devices())
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            typer.echo(f"{k:<{width}}  {v}")


def _version(mod: str) -> str:
    try:
        m = importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001 - report any import failure
        return f"not available ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
    return str(getattr(m, "__version__", "installed"))


def _openslide() -> str:
    try:
        import openslide

        return f"openslide-python {openslide.__version__}, library {openslide.__library_version__}"
    except Exception as e:  # noqa: BLE001
        return f"not available ({e})"


def _devices() -> list[tuple[str, str]]:
    import torch

    out = [("device cpu", f"{torch.get_num_threads()} threads")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append((f"device cuda:{i}", f"{p.name}, {p.total_memory / 2**30:.0f} GiB"))
    else:
        out.append(("device cuda", "not available"))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append(("device mps", "available"))
    return out
